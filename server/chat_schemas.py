"""The models of POST /v1/chat/completions: the request (messages, tools, tool choice, response format)
and the responses (the completion, its streamed chunks, tool calls, token logprobs).

Imports `server.schemas` (the shared fields) and pydantic.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from server.schemas import MAX_TOP_LOGPROBS, RequestModel, SamplingFields, Usage

Role = Literal["system", "developer", "user", "assistant", "tool"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


TEXT_PART_SCHEMA = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
TextPart = Annotated[dict[str, Any], WithJsonSchema(TEXT_PART_SCHEMA)]


class CalledFunction(RequestModel):
    name: str
    arguments: str  # a JSON object, as text


class MessageToolCall(RequestModel):
    """A call an earlier assistant turn made (sent back with the conversation)."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(RequestModel):
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


class JsonSchemaSpec(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON value
    strict: bool | None = None  # the schema is enforced either way


class ResponseFormat(RequestModel):
    """`text` (no constraint), `json_object` (any JSON object) or `json_schema` (valid against it)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class FunctionDef(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None  # forced calls follow the schema either way


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


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
