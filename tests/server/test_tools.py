"""Tools through the openai SDK: forced calls on the REAL engine (built-in model on CPU), parsing of
`auto` output on a scripted engine that answers a fixed text, and the refusals of bad tool requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest

from tests.fakes import ScriptedEngine
from tests.server_harness import Live, live_server

MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def live(real: Live) -> Live:
    return real  # the real engine (tests/server/conftest.py), not the fake one `live` is elsewhere


def chat(live: Live, **kw):
    kw = {"temperature": 0, "max_tokens": 80, "tools": TOOLS, **kw}
    return live.client.chat.completions.create(model=live.engine.model_card.id, messages=MSG, **kw)


def streamed_calls(live: Live, **kw) -> tuple[list[tuple[str, str]], str | None, str]:
    """(name, arguments) per call reassembled from the deltas, the finish reason, and the content."""
    calls: dict[int, list[str]] = {}
    finish, content = None, []
    for chunk in chat(live, stream=True, **kw):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        for d in choice.delta.tool_calls or []:
            if d.id is not None:
                assert d.type == "function" and d.function.name and d.index not in calls
                calls[d.index] = [d.function.name, d.function.arguments or ""]
            elif d.function and d.function.arguments:
                calls[d.index][1] += d.function.arguments
        finish = choice.finish_reason or finish
    return [tuple(calls[i]) for i in sorted(calls)], finish, "".join(content)


@pytest.mark.parametrize("parallel", [False, True])
def test_required_returns_a_valid_call(live, parallel):
    r = chat(live, tool_choice="required", parallel_tool_calls=parallel, max_tokens=200)
    choice = r.choices[0]
    assert choice.message.tool_calls
    if parallel:  # the tiny model may go on calling until max_tokens cuts it: each whole call counts
        assert choice.finish_reason in ("tool_calls", "length")
    else:
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_function_is_the_one_called(live):
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = chat(live, tool_choice=choice, parallel_tool_calls=False)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME)


def test_streamed_calls_reassemble_to_the_non_streamed_ones(live):
    for kw in (
        {"tool_choice": "required", "parallel_tool_calls": False},
        {"tool_choice": "required", "seed": 3},
    ):
        whole = chat(live, **kw).choices[0]
        calls, finish, content = streamed_calls(live, **kw)
        assert calls == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
        assert finish == whole.finish_reason
        assert content == (whole.message.content or "")


def test_a_conversation_with_tool_results_goes_through_the_template(live):
    messages = MSG + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius", "days": 1}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = live.client.chat.completions.create(
        model=live.engine.model_card.id, messages=messages, tools=TOOLS, max_tokens=8, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    plain = live.client.chat.completions.create(
        model=live.engine.model_card.id, messages=MSG, max_tokens=1, temperature=0
    )
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the tool listing and the turns


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_bad_tool_requests_are_400s(live, body, param):
    r = live.http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": []}, "messages[1].tool_calls"),
        ({"role": "user"}, "messages[1].content"),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            },
            "messages[1].tool_calls",
        ),
    ],
)
def test_bad_tool_messages_are_400s(live, message, param):
    r = live.http.post("/v1/chat/completions", json={"messages": MSG + [message], "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# ---- auto: whatever <tool_call> blocks the model writes are parsed (a scripted engine writes them) -----

AUTO_TEXT = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 2}}'
    "\n</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {"zone": "CET"}}'
    "\n</tool_call>"
)


@pytest.fixture(scope="module")
def scripted() -> Iterator[Live]:
    with live_server(ScriptedEngine(AUTO_TEXT)) as srv:
        yield srv


def test_auto_parses_the_calls_it_finds(scripted):
    r = chat(scripted)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius", "days": 2}),
        ("get_time", {"zone": "CET"}),
    ]
    request = scripted.engine.requests[-1]
    assert request.params.constraint is None  # auto: unconstrained
    assert [t["function"]["name"] for t in request.tools] == ["get_weather", "get_time"]
    calls, finish, content = streamed_calls(scripted)
    assert calls == [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert (finish, content) == ("tool_calls", "Let me check.")


def test_none_neither_renders_nor_parses(scripted):
    r = chat(scripted, tool_choice="none")
    assert r.choices[0].message.content == AUTO_TEXT and r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    assert scripted.engine.requests[-1].tools is None


def test_required_sends_the_tool_grammar(scripted):
    chat(scripted, tool_choice="required", parallel_tool_calls=False)
    c = scripted.engine.requests[-1].params.constraint
    assert c.kind == "tool_calls" and not c.parallel
    assert [name for name, _ in c.functions] == ["get_weather", "get_time"]
    chat(scripted, response_format={"type": "json_object"}, tool_choice="none")
    assert scripted.engine.requests[-1].params.constraint.kind == "json"
