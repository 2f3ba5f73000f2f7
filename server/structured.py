"""Structured outputs and tools for chat: what the engine is asked, and tool calls in the answer.

`plan()` reads chat's `response_format`, `tools`, `tool_choice` and `parallel_tool_calls` into a `Plan`
(`make_plan`, which /v1/responses calls with its own fields too): the
tools the chat template renders, the grammar `Constraint` the engine enforces (JSON, or forced tool
calls for `required` and a named function) and whether the output is parsed for `<tool_call>` blocks
(`auto`, `required`, named). `ToolCalls` turns a choice's text, streamed or whole, into OpenAI
`tool_calls` with the same parser (`engine.core.tool_calls`), so both forms give the same calls.
Torch-free; the schemas themselves are compiled (and refused with a 400) by the engine.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from engine.api.protocol import Constraint
from engine.core.tool_calls import ParsedCall, ToolCallParser
from server.chat_schemas import (
    ChatCompletionRequest,
    ChatDelta,
    FunctionCall,
    FunctionDelta,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
)
from server.errors import APIError

NO_PARAMETERS = {"type": "object", "properties": {}}
ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class Plan:
    tools: tuple[dict, ...] | None  # what the chat template renders
    constraint: Constraint | None
    parse_tool_calls: bool


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class Function:
    """A function tool as both endpoints give it: chat nests it under `function`, responses does not."""

    name: str
    description: str | None
    parameters: dict | None
    param: str  # where the request names it, for errors: "tools[0].function.name", "tools[0].name"


def plan(body: ChatCompletionRequest) -> Plan:
    """Chat's plan: 400 `invalid_value` for a choice that names no given tool, or tools named twice."""
    tools = [
        Function(t.function.name, t.function.description, t.function.parameters, f"tools[{i}].function.name")
        for i, t in enumerate(body.tools or [])
    ]
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    fmt = body.response_format
    schema = None
    if fmt is not None and fmt.type != "text":
        schema = ANY_OBJECT if fmt.type == "json_object" else (fmt.json_schema.schema_ or {})
    return make_plan(tools, None if named else choice, named, schema, body.parallel_tool_calls)


def make_plan(
    tools: list[Function],
    choice: str | None,
    named: str | None,
    json_schema: dict | None,
    parallel: bool | None,
) -> Plan:
    """The tools the template renders, the constraint and the parsing of one request: `choice` is
    "none" | "auto" | "required" (None: "auto" with tools, "none" without) unless `named` names the one
    function to call; `json_schema` the output's schema (None: free text). 400 `invalid_value` for a
    choice that names no given tool, or tools named twice."""
    if named is None:
        choice = choice if choice is not None else ("auto" if tools else "none")
    if (named is not None or choice != "none") and not tools:
        raise _bad("tool_choice needs tools: no tools were given.", "tool_choice")
    names = [t.name for t in tools]
    for i, t in enumerate(tools):
        if t.name in names[:i]:
            raise _bad(f"Two tools are named '{t.name}'.", t.param)
    if named is not None and named not in names:
        raise _bad(f"tool_choice names '{named}', which is not one of the tools.", "tool_choice")
    calling = named is not None or choice != "none"
    rendered = (
        tuple(
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters or NO_PARAMETERS,
                },
            }
            for t in tools
        )
        if calling
        else None
    )
    constraint = None
    if choice == "required" or named is not None:
        forced = [t for t in tools if named is None or t.name == named]
        constraint = Constraint(
            "tool_calls",
            functions=tuple((t.name, json.dumps(t.parameters or NO_PARAMETERS)) for t in forced),
            parallel=parallel is not False,
        )
    elif json_schema is not None:
        constraint = Constraint("json", schema=json.dumps(json_schema))
    return Plan(tools=rendered, constraint=constraint, parse_tool_calls=calling)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str | None, calls: int) -> str | None:
    """ "tool_calls" when a generation that ended on its own made calls (a cut one stays "length")."""
    return "tool_calls" if reason == "stop" and calls else reason


def message_parts(text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole text as (content or None, tool calls)."""
    parser = ToolCallParser()
    events = parser.push(text) + parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls = [
        ToolCall(id=_call_id(), function=FunctionCall(name=e.name, arguments=e.arguments))
        for e in events
        if isinstance(e, ParsedCall)
    ]
    return (content or None), calls


class StreamedToolCalls:
    """One choice's streamed text as deltas: content, and per call an opening delta then its arguments."""

    def __init__(self) -> None:
        self._parser = ToolCallParser()

    @property
    def calls(self) -> int:
        return self._parser.calls

    def deltas(self, text: str, final: bool) -> list[ChatDelta]:
        events = self._parser.push(text) + (self._parser.finish() if final else [])
        index = self._parser.calls - sum(isinstance(e, ParsedCall) for e in events)  # of the first new call
        out = []
        for e in events:
            if isinstance(e, str):
                out.append(ChatDelta(content=e))
                continue
            out.append(
                ChatDelta(
                    tool_calls=[
                        ToolCallDelta(
                            index=index,
                            id=_call_id(),
                            type="function",
                            function=FunctionDelta(name=e.name, arguments=""),
                        )
                    ]
                )
            )
            out.append(
                ChatDelta(
                    tool_calls=[ToolCallDelta(index=index, function=FunctionDelta(arguments=e.arguments))]
                )
            )
            index += 1
        return out
