"""Every bad input gets an OpenAI-shaped 4xx, and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.api.errors import EngineDead
from server.config import ServerConfig
from tests.fakes import FakeEngine
from tests.server_harness import live_server

MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"


def chat(**kw):
    return {"model": "fake-moe", "messages": MSG, **kw}


# (path, body, status, code, param); body is a dict (sent as JSON) or raw bytes.
CASES = [
    ("malformed json", CHAT, b'{"messages": [', 400, "invalid_json", None),
    ("json not an object", CHAT, b"[1, 2]", 400, "invalid_value", None),
    ("empty body", CHAT, b"", 400, None, None),
    ("missing messages", CHAT, {"model": "fake-moe"}, 400, "invalid_value", "messages"),
    ("empty messages", CHAT, chat(messages=[]), 400, "invalid_value", "messages"),
    ("messages not a list", CHAT, chat(messages="hi"), 400, "invalid_value", "messages"),
    (
        "unknown role",
        CHAT,
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "invalid_value",
        "messages[0].role",
    ),
    ("missing content", CHAT, chat(messages=[{"role": "user"}]), 400, "invalid_value", "messages[0].content"),
    (
        "content wrong type",
        CHAT,
        chat(messages=[{"role": "user", "content": 5}]),
        400,
        "invalid_value",
        "messages[0].content",
    ),
    (
        "image part",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
        "invalid_value",
        "messages[0].content",
    ),
    ("temperature string", CHAT, chat(temperature="hot"), 400, "invalid_value", "temperature"),
    ("temperature too high", CHAT, chat(temperature=2.5), 400, "invalid_value", "temperature"),
    ("temperature negative", CHAT, chat(temperature=-0.1), 400, "invalid_value", "temperature"),
    ("top_p zero", CHAT, chat(top_p=0), 400, "invalid_value", "top_p"),
    ("top_p above one", CHAT, chat(top_p=1.5), 400, "invalid_value", "top_p"),
    ("max_tokens zero", CHAT, chat(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max_tokens float", CHAT, chat(max_tokens=1.5), 400, "invalid_value", "max_tokens"),
    ("max_tokens string", CHAT, chat(max_tokens="10"), 400, "invalid_value", "max_tokens"),
    (
        "max_completion_tokens negative",
        CHAT,
        chat(max_completion_tokens=-3),
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    ("n zero", CHAT, chat(n=0), 400, "invalid_value", "n"),
    ("n too many", CHAT, chat(n=1000), 400, "invalid_value", "n"),
    ("seed string", CHAT, chat(seed="abc"), 400, "invalid_value", "seed"),
    ("seed too large", CHAT, chat(seed=2**70), 400, "invalid_value", "seed"),
    ("stream not bool", CHAT, chat(stream="yes"), 400, "invalid_value", "stream"),
    ("stop wrong type", CHAT, chat(stop=5), 400, "invalid_value", "stop"),
    ("empty stop", CHAT, chat(stop=[""]), 400, "invalid_value", "stop"),
    ("too many stops", CHAT, chat(stop=[str(i) for i in range(40)]), 400, "invalid_value", "stop"),
    (
        "stream_options without stream",
        CHAT,
        chat(stream_options={"include_usage": True}),
        400,
        "invalid_value",
        "stream_options",
    ),
    ("top_logprobs without logprobs", CHAT, chat(top_logprobs=2), 400, "invalid_value", "top_logprobs"),
    ("top_logprobs > 20", CHAT, chat(logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    ("logprobs not bool", CHAT, chat(logprobs=2), 400, "invalid_value", "logprobs"),
    ("frequency_penalty > 2", CHAT, chat(frequency_penalty=2.5), 400, "invalid_value", "frequency_penalty"),
    ("presence_penalty < -2", CHAT, chat(presence_penalty=-3), 400, "invalid_value", "presence_penalty"),
    ("repetition_penalty 0", CHAT, chat(repetition_penalty=0), 400, "invalid_value", "repetition_penalty"),
    ("min_p > 1", CHAT, chat(min_p=1.5), 400, "invalid_value", "min_p"),
    ("logit_bias key", CHAT, chat(logit_bias={"a": 1}), 400, "invalid_value", "logit_bias"),
    ("logit_bias > 100", CHAT, chat(logit_bias={"5": 101}), 400, "invalid_value", "logit_bias"),
    ("logit_bias out of vocab", CHAT, chat(logit_bias={"257": 1}), 400, "invalid_value", "logit_bias"),
    ("best_of", CHAT, chat(best_of=2), 400, "invalid_value", "best_of"),
    ("audio", CHAT, chat(audio={"voice": "alloy", "format": "wav"}), 400, "invalid_value", "audio"),
    ("modalities", CHAT, chat(modalities=["text", "audio"]), 400, "invalid_value", "modalities"),
    ("unknown model", CHAT, chat(model="gpt-4o"), 404, "model_not_found", "model"),
    (
        "prompt too long",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * 600}]),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("max_tokens beyond context", CHAT, chat(max_tokens=500), 400, "context_length_exceeded", "max_tokens"),
    ("completion prompt missing", COMP, {"model": "fake-moe"}, 400, "invalid_value", "prompt"),
    ("completion prompt wrong type", COMP, {"prompt": 5}, 400, "invalid_value", "prompt"),
    ("completion prompt empty list", COMP, {"prompt": []}, 400, "invalid_value", "prompt"),
    ("completion negative token id", COMP, {"prompt": [1, -2]}, 400, "invalid_value", "prompt"),
    ("completion token id out of vocab", COMP, {"prompt": [1, 100000]}, 400, "invalid_request", "prompt"),
    ("completion logprobs > 5", COMP, {"prompt": "a", "logprobs": 6}, 400, "invalid_value", "logprobs"),
    ("completion logprobs bool", COMP, {"prompt": "a", "logprobs": True}, 400, "invalid_value", "logprobs"),
    ("completion suffix", COMP, {"prompt": "a", "suffix": "b"}, 400, "invalid_value", "suffix"),
    ("completion too long", COMP, {"prompt": "y" * 513}, 400, "context_length_exceeded", "prompt"),
    (
        "completion max_tokens beyond",
        COMP,
        {"prompt": "y" * 500, "max_tokens": 20},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    ("completion n x prompts", COMP, {"prompt": ["a"] * 9, "n": 2}, 400, "invalid_value", "n"),
    ("completion unknown model", COMP, {"prompt": "a", "model": "nope"}, 404, "model_not_found", "model"),
]


def _with_stream_variants(cases):
    """Each JSON case plain, and streamed too (errors must come before any SSE byte)."""
    out = []
    for name, path, body, status, code, param in cases:
        out.append(pytest.param(path, body, status, code, param, id=name))
        if isinstance(body, dict) and "stream" not in body and "stream_options" not in body:
            out.append(
                pytest.param(path, {**body, "stream": True}, status, code, param, id=name + " (stream)")
            )
    return out


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), _with_stream_variants(CASES))
def test_bad_input_gets_openai_error(live, path, body, status, code, param):
    if isinstance(body, bytes):
        r = live.http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = live.http.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    assert err["type"] in ("invalid_request_error", "rate_limit_error")
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param
    assert live.http.get("/health").status_code == 200


def test_errors_through_the_openai_sdk(live):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        live.client.chat.completions.create(model="fake-moe", messages=MSG, temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        live.client.chat.completions.create(model="other", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        live.client.chat.completions.create(
            model="fake-moe", messages=[{"role": "user", "content": "z" * 900}], stream=True
        )
    assert e.value.body["code"] == "context_length_exceeded"


def test_unknown_route_and_method(live):
    r = live.http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = live.http.get(CHAT)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = live.http.get("/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_non_utf8_and_deeply_nested_bodies(live):
    r = live.http.post(
        CHAT, content=b'{"messages": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    nested = b"[" * 5000 + b"]" * 5000
    r = live.http.post(CHAT, content=nested, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert live.http.get("/health").status_code == 200


def test_body_size_limit(live):
    big = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    r = live.http.post(CHAT, json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(6):
            yield b" " * (1024 * 1024)

    r = live.http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert live.http.get("/health").status_code == 200


def test_unexpected_engine_exception_is_a_generic_500(live):
    live.engine.fail_with = RuntimeError("secret internal detail at /some/path.py line 3")
    r = live.http.post(CHAT, json=chat(max_tokens=2))
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "secret" not in json.dumps(err)
    assert live.http.post(CHAT, json=chat(max_tokens=2)).status_code == 200


def test_engine_dead_maps_to_503(live):
    live.engine.fail_with = EngineDead("the engine thread died")
    r = live.http.post(CHAT, json=chat(max_tokens=2, stream=True))
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


def test_api_key():
    with live_server(FakeEngine(), ServerConfig(api_key="s3cret"), api_key="s3cret") as srv:
        assert srv.http.post(CHAT, json=chat(max_tokens=2)).status_code == 200
        assert srv.client.models.list().data[0].id == "fake-moe"
        with httpx.Client(base_url=srv.url, timeout=5) as anon:
            r = anon.post(CHAT, json=chat(max_tokens=2))
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = anon.get("/v1/models", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
            assert anon.get("/health").status_code == 200
            assert anon.get("/metrics").status_code == 200
