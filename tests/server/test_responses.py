"""POST /v1/responses through the openai SDK (`client.responses`) and raw SSE: what the engine is asked,
the response object, the streamed events, the refusals of what a stateless server cannot do; on the
REAL engine (built-in model on CPU): the same greedy text as chat, a JSON schema followed, a forced
function call and its result sent back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from server.config import ServerConfig
from tests.fakes import DiesMidStream, FakeEngine, ScriptedEngine
from tests.server_harness import Live, live_server

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}


def _events(http: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    """(SSE event name, data) of a streamed response, checking that the name is the data's type."""
    out, name = [], None
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["type"] == name
                out.append((name, data))
    return out


# ------------------------------------------------------------------------------------ the fake engine
def test_a_string_input_is_one_user_message_after_the_instructions(live: Live):
    r = live.client.responses.create(
        model="fake-moe", input="hello", instructions="Be brief.", max_output_tokens=8
    )
    sent = live.engine.requests[-1]
    assert sent.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"})
    assert sent.params.max_tokens == 8 and sent.request_id == r.id and r.id.startswith("resp_")
    assert r.object == "response" and r.model == "fake-moe" and r.instructions == "Be brief."
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert r.output_text == item.content[0].text != ""
    assert r.usage.input_tokens > 0 and r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_input_items_become_the_chat_templates_messages(live: Live):
    args = '{"city": "Paris"}'
    live.client.responses.create(
        model="fake-moe",
        max_output_tokens=4,
        tools=[TOOL],
        input=[
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather"},
                                                            {"type": "input_text", "text": "in Paris?"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": args},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": args},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    )  # fmt: skip
    sent = live.engine.requests[-1]
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert sent.messages == (
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather\nin Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"id": "c1", **call}, {"id": "c2", **call}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    )
    assert sent.tools[0]["function"]["name"] == "get_weather"  # rendered for the template: tool_choice auto


def test_the_token_limit_makes_the_response_incomplete(live: Live):
    r = live.client.responses.create(model="fake-moe", input="hello", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.max_output_tokens == 2
    done = live.client.responses.create(model="fake-moe", input="hello")  # ends by itself (eos)
    assert done.status == "completed" and done.incomplete_details is None


def test_streamed_events_build_the_same_response(live: Live):
    body = {"model": "fake-moe", "input": "hello", "temperature": 0}
    whole = live.client.responses.create(**body)
    events = _events(live.http, body)
    names = [n for n, _ in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    final = events[-1][1]["response"]
    assert "".join(deltas) == whole.output_text == final["output"][0]["content"][0]["text"]
    assert events[0][1]["response"]["status"] == "in_progress" and final["status"] == "completed"
    assert (
        final["usage"]["output_tokens"] == whole.usage.output_tokens
        and final["id"] == events[0][1]["response"]["id"]
    )
    item_id = events[2][1]["item"]["id"]
    assert all(d["item_id"] == item_id for n, d in events if n == "response.output_text.delta")
    with live.client.responses.stream(**body) as stream:  # the SDK's own accumulation agrees
        assert stream.get_final_response().output_text == whole.output_text


def test_an_empty_answer_is_an_empty_message_whole_and_streamed(live: Live):
    first = live.client.responses.create(model="fake-moe", input="hello", temperature=0).output_text
    body = {"input": "hello", "temperature": 0, "stop": [first[:3]]}  # stops before any text
    whole = live.http.post("/v1/responses", json=body).json()
    assert whole["status"] == "completed" and whole["output"][0]["content"][0]["text"] == ""
    events = _events(live.http, body)
    assert [n for n, _ in events][2:] == ["response.output_item.added", "response.content_part.added",
                                          "response.output_text.done", "response.content_part.done",
                                          "response.output_item.done", "response.completed"]  # fmt: skip
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == ""


def test_a_cut_stream_ends_with_response_incomplete(live: Live):
    events = _events(live.http, {"input": "hello", "max_output_tokens": 2})
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_mid_stream_is_an_error_event_then_response_failed():
    inner = FakeEngine()
    with live_server(DiesMidStream(inner)) as srv:
        events = _events(srv.http, {"input": "hello", "temperature": 0})
        (n1, error), (n2, failed) = events[-2:]
        assert (n1, n2) == ("error", "response.failed")
        assert error["code"] == "engine_dead" and failed["response"]["status"] == "failed"
        assert failed["response"]["error"]["code"] == "engine_dead"
        assert inner.running == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_never_made"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"n": 2}, "n"),
        ({"truncation": "auto"}, "truncation"),
        ({"max_tool_calls": 1}, "max_tool_calls"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}, "input[0].arguments"),
        ({"input": []}, "input"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [TOOL]}, "tool_choice"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ],
)  # fmt: skip
def test_what_is_not_served_is_a_400_naming_the_field(live: Live, extra: dict, param: str):
    r = live.http.post("/v1/responses", json={"input": "hi", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------ the store
def test_previous_response_id_continues_the_stored_conversation(live: Live):
    c = live.client
    first = c.responses.create(
        model="fake-moe", input="My name is Ada.", instructions="Be kind.", max_output_tokens=6
    )
    assert first.store is True and c.responses.retrieve(first.id).output_text == first.output_text
    second = c.responses.create(
        model="fake-moe", previous_response_id=first.id, input="And yours?", max_output_tokens=6
    )
    assert second.previous_response_id == first.id
    assert live.engine.requests[-1].messages == (  # the first turn's instructions are not carried over
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And yours?"},
    )
    c.responses.create(model="fake-moe", previous_response_id=second.id, input="Bye.", instructions="Short.",
                       max_output_tokens=2)  # fmt: skip
    sent = live.engine.requests[-1].messages
    assert sent[0] == {"role": "system", "content": "Short."} and len(sent) == 6
    assert sent[4] == {"role": "assistant", "content": second.output_text} and sent[-1]["content"] == "Bye."


def test_a_streamed_response_is_stored_as_its_last_event_says(live: Live):
    events = _events(live.http, {"input": "hello", "temperature": 0})
    final = events[-1][1]["response"]
    assert live.http.get(f"/v1/responses/{final['id']}").json() == final


def test_store_false_and_delete_forget_a_response(live: Live):
    c = live.client
    kept = c.responses.create(model="fake-moe", input="hi", max_output_tokens=2)
    gone = c.responses.create(model="fake-moe", input="hi", max_output_tokens=2, store=False)
    assert gone.store is False
    r = live.http.get(f"/v1/responses/{gone.id}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    later = live.http.post("/v1/responses", json={"input": "x", "previous_response_id": gone.id})
    assert later.status_code == 400 and later.json()["error"]["param"] == "previous_response_id"
    assert gone.id in later.json()["error"]["message"]
    deleted = live.http.delete(f"/v1/responses/{kept.id}")
    assert deleted.status_code == 200 and deleted.json() == {
        "id": kept.id,
        "object": "response",
        "deleted": True,
    }
    assert live.http.get(f"/v1/responses/{kept.id}").status_code == 404
    assert live.http.delete(f"/v1/responses/{kept.id}").status_code == 404


def test_input_items_are_listed_back_newest_first_in_pages(live: Live):
    items = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "snow", "id": "fco_mine"},
    ]
    r = live.client.responses.create(model="fake-moe", input=items, tools=[TOOL], max_output_tokens=2)
    listed = live.client.responses.input_items.list(r.id, order="asc")
    kinds = [(i.type, getattr(i, "role", None)) for i in listed.data]
    assert kinds == [("message", "developer"), ("message", "user"), ("message", "assistant"),
                     ("function_call", None), ("function_call_output", None)]  # fmt: skip
    assert listed.data[1].content[0].text == "Weather?" and listed.data[2].content[0].type == "output_text"
    assert listed.data[3].arguments == '{"city": "Oslo"}' and listed.data[4].id == "fco_mine"
    assert listed.has_more is False and listed.first_id == listed.data[0].id
    newest = live.http.get(f"/v1/responses/{r.id}/input_items", params={"limit": 2}).json()
    assert [i["type"] for i in newest["data"]] == ["function_call_output", "function_call"] and newest[
        "has_more"
    ]
    rest = live.http.get(
        f"/v1/responses/{r.id}/input_items", params={"limit": 2, "after": newest["last_id"]}
    ).json()
    assert [i["role"] for i in rest["data"]] == ["assistant", "user"] and rest["has_more"]
    bad = live.http.get(f"/v1/responses/{r.id}/input_items", params={"after": "msg_not_here"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    zero = live.http.get(f"/v1/responses/{r.id}/input_items", params={"limit": 0})
    assert zero.status_code == 400 and zero.json()["error"]["param"] == "limit"
    assert live.http.get("/v1/responses/resp_gone/input_items").status_code == 404
    one = live.client.responses.create(model="fake-moe", input="hello", max_output_tokens=2)
    (item,) = live.client.responses.input_items.list(one.id).data
    assert item.role == "user" and item.content[0].text == "hello"


def test_the_store_keeps_the_most_recently_used():
    with live_server(FakeEngine(), ServerConfig(response_store=2)) as srv:
        a, b = (srv.client.responses.create(input=t, max_output_tokens=2) for t in ("a", "b"))
        srv.client.responses.retrieve(a.id)  # a is now the most recently used
        c = srv.client.responses.create(previous_response_id=b.id, input="c", max_output_tokens=2)  # uses b
        assert srv.http.get(f"/v1/responses/{a.id}").status_code == 404  # evicted for c
        assert srv.http.get(f"/v1/responses/{b.id}").status_code == 200
        d = srv.client.responses.create(input="d", max_output_tokens=2)  # evicts c (b was used after it)
        r = srv.http.post("/v1/responses", json={"input": "e", "previous_response_id": c.id})
        assert r.status_code == 400 and c.id in r.json()["error"]["message"]
        assert srv.http.get(f"/v1/responses/{d.id}").status_code == 200


def test_with_no_store_every_request_is_stateless():
    with live_server(FakeEngine(), ServerConfig(response_store=0)) as srv:
        r = srv.client.responses.create(input="a", max_output_tokens=2)
        assert r.store is False and srv.http.get(f"/v1/responses/{r.id}").status_code == 404
        later = srv.http.post("/v1/responses", json={"input": "b", "previous_response_id": r.id})
        assert later.status_code == 400 and "MOE_RESPONSE_STORE=0" in later.json()["error"]["message"]


CALLS_TEXT = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
)


def test_parsed_calls_are_function_call_items_and_their_outputs_continue_them():
    with live_server(ScriptedEngine(CALLS_TEXT)) as srv:
        body = {"model": "scripted", "input": "Weather in Paris and Rome?", "tools": [TOOL]}
        r = srv.client.responses.create(**body)
        kinds = [(o.type, getattr(o, "arguments", None)) for o in r.output]
        assert kinds == [
            ("message", None),
            ("function_call", '{"city": "Paris"}'),
            ("function_call", '{"city": "Rome"}'),
        ]
        assert r.output_text == "Let me check." and r.status == "completed"
        with srv.client.responses.stream(**body) as stream:
            names = [e.type for e in stream]
            streamed = stream.get_final_response()
        assert [(o.type, getattr(o, "arguments", None)) for o in streamed.output] == kinds
        assert names.count("response.function_call_arguments.done") == 2 and names[-1] == "response.completed"
        calls = [o for o in r.output if o.type == "function_call"]
        srv.client.responses.create(
            model="scripted", previous_response_id=r.id, tools=[TOOL],
            input=[{"type": "function_call_output", "call_id": c.call_id, "output": f"sunny {i}"} for i, c in enumerate(calls)],
        )  # fmt: skip
        sent = srv.engine.requests[-1].messages
        assert sent[1]["content"] == "Let me check." and [t["id"] for t in sent[1]["tool_calls"]] == [
            c.call_id for c in calls
        ]
        assert sent[1]["tool_calls"][1]["function"] == {"name": "get_weather", "arguments": {"city": "Rome"}}
        assert sent[2:] == tuple(
            {"role": "tool", "content": f"sunny {i}", "tool_call_id": c.call_id} for i, c in enumerate(calls)
        )


def test_another_model_is_a_404(live: Live):
    with pytest.raises(openai.NotFoundError):
        live.client.responses.create(model="gpt-5", input="hi")


def test_the_openapi_document_describes_the_route(live: Live):
    doc = live.http.get("/openapi.json").json()
    post = doc["paths"]["/v1/responses"]["post"]
    assert set(post["responses"]) == {"200", "400", "404", "413", "429", "500", "503"}
    assert set(post["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    props = doc["components"]["schemas"]["ResponseRequest"]["properties"]
    (n,) = [s for s in props["n"]["anyOf"] if s.get("type") == "integer"]
    assert n["maximum"] == 1
    (limit,) = [s for s in props["max_output_tokens"]["anyOf"] if s.get("type") == "integer"]
    assert limit["maximum"] == live.engine.model_card.context_length - 1


# ------------------------------------------------------------------------------------ the real engine
@pytest.fixture(scope="module")
def real_live(real: Live) -> Iterator[Live]:
    yield real


def test_greedy_text_equals_chats(real_live: Live):
    model = real_live.engine.model_card.id
    r = real_live.client.responses.create(model=model, input="What is the capital of France?", instructions="Be brief.",
                                          max_output_tokens=24, temperature=0)  # fmt: skip
    chat = real_live.client.chat.completions.create(
        model=model, max_tokens=24, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
    )  # fmt: skip
    assert r.output_text == chat.choices[0].message.content != ""
    assert (
        r.usage.input_tokens == chat.usage.prompt_tokens
        and r.usage.output_tokens == chat.usage.completion_tokens
    )
    assert (r.status == "incomplete") == (chat.choices[0].finish_reason == "length")


def test_a_json_schema_format_is_followed(real_live: Live):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}},
              "required": ["name"], "additionalProperties": False}  # fmt: skip
    r = real_live.client.responses.create(
        model=real_live.engine.model_card.id, input="A JSON object with a name, please.", temperature=0,
        max_output_tokens=40, text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )  # fmt: skip
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_a_forced_call_is_a_function_call_item_whole_and_streamed(real_live: Live):
    body = {"model": real_live.engine.model_card.id, "input": "Weather in Paris?", "tools": [TOOL],
            "tool_choice": "required", "parallel_tool_calls": False, "max_output_tokens": 60, "temperature": 0}  # fmt: skip
    r = real_live.client.responses.create(**body)
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert r.status == "completed"
    with real_live.client.responses.stream(**body) as stream:
        names = [e.type for e in stream]
        (streamed,) = stream.get_final_response().output
    assert "response.function_call_arguments.delta" in names and "response.output_text.delta" not in names
    assert streamed.arguments == call.arguments and streamed.name == call.name
    # the call and its result sent back: the model answers in text
    back = real_live.client.responses.create(
        model=body["model"], tools=[TOOL], max_output_tokens=8, temperature=0,
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    assert back.output[0].type == "message" and back.usage.input_tokens > r.usage.input_tokens


def test_top_logprobs_come_with_the_output_text(real_live: Live):
    r = real_live.client.responses.create(model=real_live.engine.model_card.id, input="hi", max_output_tokens=3,
                                          top_logprobs=2, temperature=0)  # fmt: skip
    lps = r.output[0].content[0].logprobs
    assert len(lps) == r.usage.output_tokens and all(len(x.top_logprobs) == 2 for x in lps)
    assert "".join(x.token for x in lps) == r.output_text
    assert lps[0].logprob == pytest.approx(max(t.logprob for t in lps[0].top_logprobs))  # greedy: the best


def test_input_tokens_counts_what_the_response_would_see(real_live: Live):
    model = real_live.engine.model_card.id
    first = real_live.client.responses.create(
        model=model, input="My name is Ada.", max_output_tokens=4, temperature=0
    )
    body = {"model": model, "input": "What is my name?", "instructions": "Answer briefly.", "tools": [TOOL],
            "previous_response_id": first.id}  # fmt: skip
    counted = real_live.client.responses.input_tokens.count(**body)
    assert counted.object == "response.input_tokens"
    answered = real_live.client.responses.create(**body, max_output_tokens=2, temperature=0)
    assert counted.input_tokens == answered.usage.input_tokens > first.usage.input_tokens
    without_tools = real_live.client.responses.input_tokens.count(**{**body, "tools": None})
    assert without_tools.input_tokens < counted.input_tokens  # the template renders the tools
    r = real_live.http.post("/v1/responses/input_tokens", json={**body, "previous_response_id": "resp_gone"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"


def test_input_tokens_refuses_a_limit_generating_would_refuse(live: Live):
    ctx = live.engine.model_card.context_length
    ok = live.http.post("/v1/responses/input_tokens", json={"input": "hi", "max_output_tokens": ctx - 1})
    assert ok.status_code == 200 and ok.json()["input_tokens"] > 0
    r = live.http.post("/v1/responses/input_tokens", json={"input": "hi", "max_output_tokens": ctx})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"
