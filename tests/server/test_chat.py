"""Chat completions through the openai SDK against a live server with the scripted engine."""

from __future__ import annotations

import json

import pytest

from tests.fakes import render_messages

MSG = [{"role": "user", "content": "Tell me about experts 🙂"}]


def stream_text(live, **kw) -> tuple[str, str | None, list]:
    chunks = list(live.client.chat.completions.create(model="fake-moe", messages=MSG, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, (finish[0] if finish else None), chunks


def test_streamed_equals_non_streamed_greedy(live):
    full = live.client.chat.completions.create(model="fake-moe", messages=MSG, temperature=0, max_tokens=40)
    text, finish, chunks = stream_text(live, temperature=0, max_tokens=40)
    assert full.choices[0].message.content == text
    assert len(text) > 10 and any(ord(ch) > 127 for ch in text)  # multi-byte chars crossed token boundaries
    assert "\ufffd" not in text
    assert full.choices[0].finish_reason == finish == "length"
    assert full.object == "chat.completion" and full.model == "fake-moe"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}


def test_usage_adds_up(live):
    full = live.client.chat.completions.create(model="fake-moe", messages=MSG, temperature=0, max_tokens=17)
    u = full.usage
    assert u.completion_tokens == 17
    assert u.prompt_tokens == len(render_messages(tuple(MSG)).encode())
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_natural_end_is_stop(live):
    full = live.client.chat.completions.create(model="fake-moe", messages=MSG, temperature=0)
    assert full.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == live.engine.eos_after + 1  # the EOS token counts


def test_stream_include_usage(live):
    text, _, chunks = stream_text(live, temperature=0, max_tokens=9, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    u = chunks[-1].usage
    assert u.completion_tokens == 9 and u.total_tokens == u.prompt_tokens + 9


def test_stream_without_usage_has_no_usage_field(live):
    with live.http.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": MSG, "stream": True, "max_tokens": 5, "temperature": 0},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in p and p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_with_stop_and_is_not_in_text(live):
    base = live.client.chat.completions.create(model="fake-moe", messages=MSG, temperature=0, max_tokens=40)
    text = base.choices[0].message.content
    stop = text[12:16]  # somewhere inside, possibly splitting a multi-byte character's tokens
    expected = text[: text.find(stop)]
    full = live.client.chat.completions.create(
        model="fake-moe", messages=MSG, temperature=0, max_tokens=40, stop=[stop, "never-there"]
    )
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.content == expected and stop not in expected
    streamed, finish, _ = stream_text(live, temperature=0, max_tokens=40, stop=stop)
    assert streamed == expected and finish == "stop"


def test_seed_makes_sampling_reproducible(live):
    def sample(seed):
        r = live.client.chat.completions.create(
            model="fake-moe", messages=MSG, temperature=1.0, seed=seed, max_tokens=30
        )
        return r.choices[0].message.content

    a, b, c = sample(1234), sample(1234), sample(99)
    assert a == b
    assert a != c
    unseeded = {sample(None) for _ in range(3)}
    assert len(unseeded) > 1


def test_max_completion_tokens_wins_over_max_tokens(live):
    r = live.client.chat.completions.create(
        model="fake-moe", messages=MSG, temperature=0, max_tokens=30, max_completion_tokens=5
    )
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_n_choices_with_seed(live):
    r = live.client.chat.completions.create(
        model="fake-moe", messages=MSG, temperature=1.0, seed=7, n=3, max_tokens=12
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 36
    assert r.usage.prompt_tokens == len(render_messages(tuple(MSG)).encode())
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3  # seed + i per choice
    seeds = sorted(q.params.seed for q in live.engine.requests if q.request_id.startswith(r.id))
    assert seeds == [7, 8, 9]
    # The same request streamed gives the same three texts, chunks tagged by index.
    chunks = list(
        live.client.chat.completions.create(
            model="fake-moe", messages=MSG, temperature=1.0, seed=7, n=3, max_tokens=12, stream=True
        )
    )
    streamed = [
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(3)
    ]
    assert streamed == texts


def test_unknown_fields_are_ignored_and_params_reach_engine(live):
    r = live.http.post(
        "/v1/chat/completions",
        json={
            "model": "fake-moe",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "max_tokens": 3,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.1,
            "user": "abc",
            "logit_bias": {},
            "tools": [],
            "response_format": {"type": "text"},
            "some_future_field": {"x": 1},
        },
    )
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    (req,) = [q for q in live.engine.requests if q.request_id == rid]
    assert req.params.temperature == 0.5 and req.params.top_p == 0.9 and req.params.max_tokens == 3
    assert req.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})


def test_model_may_be_omitted(live):
    r = live.http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "fake-moe"


def test_engine_failure_mid_stream_sends_an_error_event_then_done():
    import httpx
    import openai

    from tests.fakes import DiesMidStream, FakeEngine
    from tests.server_harness import live_server

    inner = FakeEngine()
    with live_server(DiesMidStream(inner)) as srv:
        with (
            httpx.Client(base_url=srv.url, timeout=10) as http,
            http.stream(
                "POST", "/v1/chat/completions", json={"messages": MSG, "stream": True, "temperature": 0}
            ) as r,
        ):
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))
        assert error["error"]["code"] == "engine_dead"
        with pytest.raises(openai.APIError):
            list(srv.client.chat.completions.create(model="fake-moe", messages=MSG, stream=True))
        assert inner.running == 0
