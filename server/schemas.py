"""What the OpenAI request and response models share, and the small bodies of /v1/models and /health.

Requests validate strictly (a string is not a number, 1.5 is not an integer) and ignore fields they
do not know, so clients that send newer OpenAI options that do not change the answer still work.
Options that would change the answer and that we cannot serve (`suffix`, `best_of` > 1, audio output,
web search) are refused with a 400 naming the field rather than silently dropped. `response_format`,
`tools`, `tool_choice` and `parallel_tool_calls` are served (grammar-constrained decoding and tool-call
parsing: `server/chat.py`, `engine/core/grammar.py`, `engine/core/tool_calls.py`).

Here: the request limits, the field types (token ids, prompts, stop strings, logit bias), the strict base
`RequestModel`, the sampling fields chat and completions share (`SamplingFields`), `Usage`. The endpoints'
own models: `chat_schemas`, `completion_schemas`, `tokenize_schemas`. Imports pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
MAX_STOP = 16
MAX_TOKEN_ID = 2**31 - 1  # the bound when the model card does not say its vocabulary size
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs`, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs`, as OpenAI
MAX_LOGIT_BIAS = 1024  # entries of `logit_bias`

# Bounds that the validators below enforce with their own messages, stated in the JSON schema too (as
# `Field(ge=...)` inside a union they would make pydantic report every union member's error instead).
TokenId = Annotated[int, Field(json_schema_extra={"minimum": 0, "maximum": MAX_TOKEN_ID})]
TokenIds = Annotated[list[TokenId], Field(json_schema_extra={"minItems": 1})]
StopString = Annotated[str, Field(json_schema_extra={"minLength": 1})]
StopList = Annotated[list[StopString], Field(json_schema_extra={"maxItems": MAX_STOP})]
PromptList = Annotated[list[str], Field(json_schema_extra={"minItems": 1})]
PromptBatch = Annotated[list[TokenIds], Field(json_schema_extra={"minItems": 1})]
Prompt = str | PromptList | TokenIds | PromptBatch

# logit_bias: token id (a JSON object key, so a string of digits) -> bias in [-100, 100]
LOGIT_BIAS_SCHEMA = {
    "type": "object",
    "propertyNames": {"pattern": "^[0-9]{1,10}$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    "maxProperties": MAX_LOGIT_BIAS,
}
LogitBias = Annotated[dict[str, float], WithJsonSchema(LOGIT_BIAS_SCHEMA)]


class RequestModel(BaseModel):
    """Every request model's base: strict types, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(RequestModel):
    include_usage: bool | None = False


class SamplingFields(RequestModel):
    model: str | None = None  # None = the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # extension (as in vLLM); 0 = off
    seed: int | None = Field(None, ge=INT64_MIN, le=UINT64_MAX)
    stop: StopString | StopList | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    min_p: float | None = Field(None, ge=0.0, le=1.0)  # extension (as in vLLM); 0 = off
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)  # extension (vLLM/HF); 1 = off
    # Accepted to be refused when they would change the answer (server.validation.check_request):
    best_of: int | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries are allowed")
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise ValueError(f"keys must be token ids (decimal digits), not {key[:24]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {key} is {bias}, not in [-100, 100]")
        return v

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        if any(s == "" for s in items):
            raise ValueError("stop strings must not be empty")
        return v

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def first_bad_id(prompt: Prompt, stop: int) -> tuple[str, int] | None:
    """The first token id outside [0, stop) and its place ("[3]" or "[1][3]"); None if there is none.

    min/max first: a 4 MiB body holds ~2M ids, and this runs on the event loop.
    """
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], str):
        return None
    rows = [(None, prompt)] if isinstance(prompt[0], int) else list(enumerate(prompt))
    for i, row in rows:
        if row and (min(row) < 0 or max(row) >= stop):
            j = next(j for j, t in enumerate(row) if not 0 <= t < stop)
            return (f"[{j}]" if i is None else f"[{i}][{j}]"), row[j]
    return None


def show_int(value: int) -> str:
    """An int for an error message; JSON lets a client send thousands of digits."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int


class Health(BaseModel):
    """GET /health; engines may add fields (e.g. `cache_slots`)."""

    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "unhealthy"]
    detail: str
    running: int
    waiting: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
