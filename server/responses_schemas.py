"""The models of POST /v1/responses (OpenAI's Responses API): the request (input items, instructions,
function tools, the text format) and the response object with its output items and usage.

Input is a string (one user message) or a list of items: messages (`role` and text, or `input_text` /
`output_text` parts), function calls an earlier turn made (`function_call`) and their results
(`function_call_output`). Only function tools; the text format is `text`, `json_object` or `json_schema`.
A request continues an earlier response with `previous_response_id` (`server.response_store`) or carries
its whole conversation; `conversation` objects are refused with a 400 (`server.responses`).

Imports `server.schemas`, `server.chat_schemas` (shared field rules, token logprobs) and pydantic.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from server.chat_schemas import FUNCTION_NAME, ChatTokenLogprob
from server.schemas import MAX_TOP_LOGPROBS, RequestModel, SamplingFields

MAX_METADATA = 16  # entries, as OpenAI; keys up to 64 characters, values up to 512
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class TextPart(RequestModel):
    """A message's text: `input_text`, or `output_text` in an assistant turn sent back."""

    type: Literal["input_text", "output_text"]
    text: str


class MessageItem(RequestModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[TextPart] | str  # the list first: a bad part is reported where it is

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


def _json_object(arguments: str) -> str:
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError("the arguments are not a JSON object")
    return arguments


class FunctionCallItem(RequestModel):
    """A call an earlier assistant turn made, sent back with the conversation."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str  # a JSON object, as text
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, v: str) -> str:
        return _json_object(v)


class FunctionCallOutputItem(RequestModel):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: list[TextPart] | str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "\n".join(p.text for p in self.output)


ITEM_TYPES = ("message", "function_call", "function_call_output")


def _item_tag(value: Any) -> str | None:
    """An item's union tag from its `type` ("item-<type>": server.errors leaves tags with a dash out of
    `param`); a message may leave the type out (OpenAI's "easy" input message)."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return f"item-{kind}" if kind in ITEM_TYPES else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("item-message")]
    | Annotated[FunctionCallItem, Tag("item-function_call")]
    | Annotated[FunctionCallOutputItem, Tag("item-function_call_output")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item",
        custom_error_message="an input item's type is message (the default), function_call or "
        "function_call_output; other items are not supported by this server",
    ),
]


class FunctionTool(RequestModel):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None  # forced calls follow the schema either way


class FunctionChoice(RequestModel):
    type: Literal["function"]
    name: str


class TextFormat(RequestModel):
    """`text` (free), `json_object` (any JSON object) or `json_schema` (valid against `schema`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the schema is enforced either way

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type json_schema needs a name and a schema")
        return self


class TextConfig(RequestModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # only "medium" is served


class ResponseRequest(SamplingFields):
    """The Responses API's fields; the shared sampling extensions (`top_k`, `seed`, `stop`, penalties, ...)
    work as in chat. `max_tokens` is chat's name; `max_output_tokens` wins when both are given."""

    input: list[InputItem] | str  # the list first: a bad item is reported where it is
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include: list[str] | None = None  # "message.output_text.logprobs" is served; others add nothing here
    metadata: dict[str, str] | None = None
    store: bool | None = None  # default true: kept for previous_response_id and GET (MOE_RESPONSE_STORE)
    user: str | None = None
    reasoning: dict[str, Any] | None = None  # accepted; the served models do not reason
    truncation: Literal["auto", "disabled"] | None = None  # only "disabled" (a too-long input is a 400)
    previous_response_id: str | None = None  # continue a stored response
    # Refused when set (server.responses): no conversation objects or templates, every request runs now.
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    background: bool | None = None
    max_tool_calls: int | None = None

    @field_validator("input")
    @classmethod
    def _some_input(cls, v: str | list) -> str | list:
        if isinstance(v, list) and not v:
            raise ValueError("at least one input item is required")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} entries are allowed")
        for key, value in v.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("keys are at most 64 characters, values at most 512")
        return v

    def token_limit(self) -> int | None:
        return self.max_output_tokens if self.max_output_tokens is not None else self.max_tokens

    @property
    def logprobs(self) -> bool:
        """Token logprobs in the output text: asked by the include, or implied by `top_logprobs`."""
        return LOGPROBS_INCLUDE in (self.include or ()) or self.top_logprobs is not None

    def logprobs_k(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None


# ---------------------------------------------------------------------------------------------- out
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)  # none: no citations here
    logprobs: list[ChatTokenLogprob] | None = None


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    instructions: str | None
    output: list[OutputItem]
    parallel_tool_calls: bool
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice
    tools: list[FunctionTool]
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    top_logprobs: int | None
    text: dict[str, Any]
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str]
    user: str | None
    previous_response_id: str | None
    store: bool
    usage: ResponseUsage | None


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]  # input items as listed back: messages, function calls, their outputs
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputTokens(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
