"""What the server refuses before the engine sees it (text that is not Unicode, token ids outside the
vocabulary) and the temperature it hands the engine, through the real app and a fake engine."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeEngine
from tests.server_harness import live_server

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
BAD = "\ud800"  # a lone surrogate: a Python str, but no UTF-8 encoding exists


def post(live, path: str, body: dict):
    # json.dumps escapes the surrogate as \ud800 (valid JSON text); httpx's own encoder would refuse it.
    return live.http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


SURROGATES = [
    ("chat content", CHAT, {"messages": user(BAD)}, "messages[0].content"),
    ("chat content inside text", CHAT, {"messages": user("ok " + BAD + " ok")}, "messages[0].content"),
    (
        "chat text part",
        CHAT,
        {"messages": [*user("hi"), {"role": "user", "content": [{"type": "text", "text": "a" + BAD}]}]},
        "messages[1].content[0].text",
    ),
    ("chat name", CHAT, {"messages": [{"role": "user", "content": "hi", "name": BAD}]}, "messages[0].name"),
    ("chat model", CHAT, {"messages": user("hi"), "model": BAD}, "model"),
    ("chat stop", CHAT, {"messages": user("hi"), "stop": BAD}, "stop"),
    ("chat stop list", CHAT, {"messages": user("hi"), "stop": ["x", BAD]}, "stop[1]"),
    ("completion prompt", COMP, {"prompt": BAD}, "prompt"),
    ("completion prompt batch", COMP, {"prompt": ["fine", "x" + BAD]}, "prompt[1]"),
    ("completion model", COMP, {"prompt": "hi", "model": "m" + BAD}, "model"),
    ("completion stop", COMP, {"prompt": "hi", "stop": [BAD]}, "stop[0]"),
    ("low surrogate", COMP, {"prompt": "\udfff"}, "prompt"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body", "param"), [pytest.param(*c[1:], id=c[0]) for c in SURROGATES])
def test_lone_surrogate_is_a_400_naming_the_field(live, path, body, param, stream):
    seen = len(live.engine.requests)
    r = post(live, path, {**body, "stream": stream})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_value" and err["type"] == "invalid_request_error"
    assert "not valid Unicode" in err["message"]
    assert len(live.engine.requests) == seen  # refused before the engine saw it
    assert live.http.get("/health").status_code == 200


def test_valid_surrogate_pairs_and_astral_characters_are_fine(live):
    # "\ud83d\ude42" in JSON is one character, U+1F642: a pair, not a lone surrogate.
    r = live.http.post(
        COMP,
        content=b'{"prompt": "smile \\ud83d\\ude42", "max_tokens": 3}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert live.engine.requests[-1].prompt == "smile 🙂"


TOKEN_IDS = [
    ("at the vocabulary size", [1, 257], 400, "invalid_request", "257 at prompt[1]"),
    ("far past it", [10**6], 400, "invalid_request", "1000000 at prompt[0]"),
    ("in a batch", [[1, 2], [3, 4096]], 400, "invalid_request", "4096 at prompt[1][1]"),
    ("2^31", [2**31], 400, "invalid_value", "2147483648 at prompt[0]"),
    ("2^63", [2**63], 400, "invalid_value", "9223372036854775808"),
    ("2^64 in a batch", [[2**64]], 400, "invalid_value", "18446744073709551616 at prompt[0][0]"),
    ("huge", [10**200], 400, "invalid_value", "(201 digits)"),
    ("negative", [-1], 400, "invalid_value", "-1 at prompt[0]"),
]


@pytest.mark.parametrize(
    ("prompt", "status", "code", "says"), [pytest.param(*c[1:], id=c[0]) for c in TOKEN_IDS]
)
def test_token_ids_outside_the_vocabulary(live, prompt, status, code, says):
    seen = len(live.engine.requests)
    r = post(live, COMP, {"prompt": prompt, "max_tokens": 1})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and err["code"] == code
    assert says in err["message"]
    assert len(live.engine.requests) == seen


def test_last_id_of_the_vocabulary_is_served(live):
    r = post(live, COMP, {"prompt": [[0, 255], [256]], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert live.engine.requests[-1].prompt_token_ids == (256,)


def test_unknown_vocabulary_still_bounds_ids():
    with live_server(FakeEngine(vocab_size=None)) as srv:
        r = post(srv, COMP, {"prompt": [2**31], "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"
        # Below 2^31 the server cannot tell; the engine's own check answers.
        r = post(srv, COMP, {"prompt": [300], "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "outside the vocabulary" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("temperature", "sent"),
    [(1e-300, 0.0), (5e-324, 0.0), (9.99e-6, 0.0), (0.0, 0.0), (1e-5, 1e-5), (0.7, 0.7), (2.0, 2.0)],
)
@pytest.mark.parametrize("path", [CHAT, COMP])
def test_tiny_temperatures_are_greedy(live, path, temperature, sent):
    body = {"messages": user("hi")} if path == CHAT else {"prompt": "hi"}
    r = post(live, path, {**body, "temperature": temperature, "max_tokens": 4, "seed": 3})
    assert r.status_code == 200, r.text
    assert live.engine.requests[-1].params.temperature == sent


def test_an_integer_json_cannot_hold_is_a_400(live):
    # json.loads refuses integers of over 4300 digits; the body still gets an OpenAI-shaped 400.
    body = b'{"prompt": [' + b"9" * 5000 + b"]}"
    r = live.http.post(COMP, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert (
        r.json()["error"]["code"] == "invalid_json" and r.json()["error"]["type"] == "invalid_request_error"
    )
