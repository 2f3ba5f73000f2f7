"""OpenAI request and response models (chat completions, completions, models).

Requests validate strictly (a string is not a number, 1.5 is not an integer) and ignore fields they
do not know, so clients that send newer OpenAI options that do not change the answer still work.
Options that would change the answer and that we cannot serve (`suffix`, `best_of` > 1, audio output,
web search) are refused with a 400 naming the field rather than silently dropped. `response_format`,
`tools`, `tool_choice` and `parallel_tool_calls` are served (grammar-constrained decoding and tool-call
parsing: `server/chat.py`, `engine/core/grammar.py`, `engine/core/tool_calls.py`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_STOP = 16
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
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

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReasonOut = Literal["stop", "length"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool | None = False


TEXT_PART_SCHEMA = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
TextPart = Annotated[dict[str, Any], WithJsonSchema(TEXT_PART_SCHEMA)]


class CalledFunction(_Request):
    name: str
    arguments: str  # a JSON object, as text


class MessageToolCall(_Request):
    """A call an earlier assistant turn made (sent back with the conversation)."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(_Request):
    # Field order matters: each validator sees the fields declared before it (`info.data`).
    role: Role
    tool_calls: list[MessageToolCall] | None = None  # assistant only
    tool_call_id: str | None = Field(None, validate_default=True)  # tool only: the call it answers
    content: str | list[TextPart] | None = Field(None, validate_default=True)  # None: tool calls alone
    name: str | None = None

    @field_validator("tool_calls")
    @classmethod
    def _calls(cls, v: list[MessageToolCall] | None, info: ValidationInfo) -> list[MessageToolCall] | None:
        if v is not None and info.data.get("role", "assistant") != "assistant":
            raise ValueError("only assistant messages may have tool_calls")
        for call in v or ():
            try:
                arguments = json.loads(call.function.arguments)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise ValueError(f"the arguments of tool call {call.id!r} are not a JSON object")
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _call_id(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("role") == "tool" and not v:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return v

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[TextPart] | None, info: ValidationInfo) -> str | list[TextPart] | None:
        if v is None:
            if "role" in info.data and not (info.data["role"] == "assistant" and info.data.get("tool_calls")):
                raise ValueError("content is required, except for an assistant message with tool_calls")
            return v
        if isinstance(v, list):
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            # Keep only what is used, so that every string the request holds is one the model sees.
            return [{"type": "text", "text": part["text"]} for part in v]
        return v

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part["text"] for part in self.content)


class JsonSchemaSpec(_Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON value
    strict: bool | None = None  # the schema is enforced either way


class ResponseFormat(_Request):
    """`text` (no constraint), `json_object` (any JSON object) or `json_schema` (valid against it)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class FunctionDef(_Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None  # forced calls follow the schema either way


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class SamplingFields(_Request):
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
    # Accepted to be refused when they would change the answer (server.common.check_request):
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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    audio: dict[str, Any] | None = None  # audio output: refused
    modalities: list[str] | None = None  # only ["text"]
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, "none" without
    parallel_tool_calls: bool | None = None  # default true

    def logprobs_k(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None  # refused unless empty (server.common.check_request)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Prompt) -> Prompt:
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt list must not be empty")
            if any(isinstance(x, list) and not x for x in v):
                raise ValueError("token-id prompts must not be empty")
            bad = first_bad_id(v, MAX_TOKEN_ID + 1)
            if bad is not None:
                where, token = bad
                raise ValueError(f"token id {show_int(token)} at prompt{where} is outside 0..{MAX_TOKEN_ID}")
        return v

    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | tuple[int, ...]]:
        """One entry per prompt: a string or a tuple of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [tuple(p)]  # type: ignore[arg-type]
        return [x if isinstance(x, str) else tuple(x) for x in p]


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


# ---- responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the answer is tool calls alone
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str  # its text; bytes of an incomplete UTF-8 character are written \xNN
    logprob: float
    bytes: list[int] | None  # the token's raw bytes


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChatDelta(BaseModel):
    """The new part of a streamed message; fields that are None are left out of the chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """The legacy shape: parallel lists, one entry per token; a prompt's first token has no logprob."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonOut | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


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


# ---- /tokenize and /detokenize (vLLM's shapes) -----------------------------------------------


class TokenizeRequest(_Request):
    """Either `prompt` (text, as completions tokenise it) or `messages` (as chat renders them)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool | None = True  # messages only
    # Default False, as generation tokenises (vLLM's default for a prompt is True: it adds a BOS there).
    add_special_tokens: bool | None = False
    model: str | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_Request):
    tokens: TokenIds
    model: str | None = None

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("the token list must not be empty")
        bad = first_bad_id(v, MAX_TOKEN_ID + 1)
        if bad is not None:
            where, token = bad
            raise ValueError(f"token id {show_int(token)} at tokens{where} is outside 0..{MAX_TOKEN_ID}")
        return v


class DetokenizeResponse(BaseModel):
    prompt: str
