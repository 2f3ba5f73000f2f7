"""Issue 20: schema-valid requests that used to take the REAL engine down (built-in model, CPU).

Each is sent while three normal streamed completions run in the engine; it gets its answer (a 4xx in
the OpenAI shape, or for a tiny temperature a greedy 200), the streams finish normally, /health stays
200 and the next request is served. On this branch the server's own checks are what make it so: the
engine itself is hardened elsewhere.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from engine.api.config import EngineConfig
from tests.server_harness import Live, live_server, wait_until

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
RESP = "/v1/responses"
STREAMS = 3
MSG = [{"role": "user", "content": "Write a short sentence about ships."}]


@pytest.fixture(scope="module")
def real() -> Iterator[Live]:
    from engine.frontend.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(
        EngineConfig(device="cpu", max_running=8, max_waiting=16, seed=0, max_model_len=512)
    )
    with live_server(engine, timeout=120.0) as srv:
        srv.handle.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see test_schemathesis.py
        yield srv


def post(live: Live, path: str, body: dict) -> httpx.Response:
    # json.dumps writes a lone surrogate as the JSON escape \ud800 (httpx's encoder would refuse it).
    return live.http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def normal_stream(live: Live, seed: int) -> tuple[str, str | None, list[str]]:
    """A streamed completion long enough to be running when the hostile request arrives."""
    text, finish, errors = [], None, []
    body = {"prompt": "Once upon a time", "max_tokens": 120, "temperature": 1.0, "seed": seed, "stream": True}
    with httpx.Client(base_url=live.url, timeout=120) as http, http.stream("POST", COMP, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                errors.append(chunk["error"]["code"])
                continue
            text.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0]["finish_reason"] or finish
    return "".join(text), finish, errors


def alongside_streams(live: Live, path: str, body: dict) -> httpx.Response:
    """Send `body` while STREAMS normal streams run; check they all finish normally."""
    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(normal_stream, live, seed) for seed in range(1, STREAMS + 1)]
        assert wait_until(lambda: live.engine.health().running == STREAMS), "the streams did not start"
        r = post(live, path, body)
        still_running = live.engine.health().running
        results = [f.result(timeout=120) for f in streams]
    assert still_running > 0, "the streams ended before the hostile request was answered"
    for text, finish, errors in results:
        assert errors == [] and finish in ("stop", "length") and text
    return r


def assert_serving(live: Live) -> None:
    assert live.http.get("/health").status_code == 200
    r = live.client.completions.create(
        model=live.engine.model_card.id, prompt="The sea", max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0


REFUSED = [
    ("token id = vocab size", COMP, {"prompt": [4096], "max_tokens": 1}, "prompt", "invalid_request"),
    (
        "token id = vocab size, batch",
        COMP,
        {"prompt": [[4096]], "max_tokens": 1},
        "prompt",
        "invalid_request",
    ),
    ("token id past the vocab", COMP, {"prompt": [7, 100_000], "max_tokens": 1}, "prompt", "invalid_request"),
    ("token id 2^63", COMP, {"prompt": [2**63], "max_tokens": 1}, "prompt", "invalid_value"),
    ("token id 2^64 + 5, batch", COMP, {"prompt": [[1], [2**64 + 5]]}, "prompt", "invalid_value"),
    (
        "lone surrogate content",
        CHAT,
        {"messages": [{"role": "user", "content": "\ud800"}]},
        "messages[0].content",
        "invalid_value",
    ),
    ("lone surrogate prompt", COMP, {"prompt": "\ud800"}, "prompt", "invalid_value"),
    ("lone surrogate model", COMP, {"prompt": "hi", "model": "\udc00"}, "model", "invalid_value"),
    ("lone surrogate responses input", RESP, {"input": "\ud800"}, "input", "invalid_value"),
    (
        "lone surrogate in an input item's part",
        RESP,
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a\udfff"}]}]},
        "input[0].content[0].text",
        "invalid_value",
    ),
    (
        "lone surrogate instructions",
        RESP,
        {"input": "hi", "instructions": "\ud83d"},
        "instructions",
        "invalid_value",
    ),
    (
        "logit bias past the vocab, responses",
        RESP,
        {"input": "hi", "logit_bias": {"4096": 5}},
        "logit_bias",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), [pytest.param(*c[1:], id=c[0]) for c in REFUSED])
def test_hostile_request_is_refused_and_the_engine_serves_on(real, path, body, param, code):
    r = alongside_streams(real, path, body)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    assert_serving(real)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324])
@pytest.mark.parametrize("path", [CHAT, COMP])
def test_tiny_temperature_is_greedy_and_the_engine_serves_on(real, path, temperature):
    body = {"messages": MSG} if path == CHAT else {"prompt": "Once upon a time"}
    body = {**body, "max_tokens": 12, "model": real.engine.model_card.id}
    r = alongside_streams(real, path, {**body, "temperature": temperature})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert_serving(real)
    # Alone (batch 1, as the greedy reference), the tiny temperature answers exactly what 0 answers.
    tiny, greedy = (post(real, path, {**body, "temperature": t}).json() for t in (temperature, 0.0))
    text = "message" if path == CHAT else "text"
    pick = (lambda c: c["message"]["content"]) if text == "message" else (lambda c: c["text"])
    assert pick(tiny["choices"][0]) == pick(greedy["choices"][0])
