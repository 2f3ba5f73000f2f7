"""POST /tokenize and /detokenize: vLLM's shapes, validation, and a round trip through the REAL engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engine.api.config import EngineConfig
from tests.server_harness import Live, live_server

TEXT = "héllo wörld 日本語 🙂"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def real() -> Iterator[Live]:
    from engine.frontend.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(EngineConfig(device="cpu", max_running=2, max_waiting=4, seed=0))
    with live_server(engine, timeout=120.0) as srv:
        yield srv


def test_round_trip(real):
    r = real.http.post("/tokenize", json={"prompt": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"count", "max_model_len", "tokens"}
    assert body["count"] == len(body["tokens"]) > 0
    assert body["max_model_len"] == real.engine.model_card.context_length
    back = real.http.post("/detokenize", json={"tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": TEXT}


def test_tokenize_counts_what_generation_sees(real):
    chat = real.http.post("/tokenize", json={"messages": MSG}).json()
    r = real.client.chat.completions.create(model=real.engine.model_card.id, messages=MSG, max_tokens=1)
    assert chat["count"] == r.usage.prompt_tokens
    bare = real.http.post("/tokenize", json={"messages": MSG, "add_generation_prompt": False}).json()
    assert bare["count"] < chat["count"] and chat["tokens"][: bare["count"]] == bare["tokens"]
    text = real.http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert text.startswith("<|im_start|>user\nhi<|im_end|>")  # special tokens are kept
    prompt = real.client.completions.create(model=real.engine.model_card.id, prompt=TEXT, max_tokens=1)
    assert real.http.post("/tokenize", json={"prompt": TEXT}).json()["count"] == prompt.usage.prompt_tokens


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": MSG}, "prompt"),
        ("/tokenize", {"prompt": "\ud800"}, "prompt"),
        ("/tokenize", {"messages": [{"role": "user", "content": "\udc00"}]}, "messages[0].content"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/detokenize", {"tokens": []}, "tokens"),
        ("/detokenize", {"tokens": [4096]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [2**64]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_bad_requests_are_400_naming_the_field(real, path, body, param):
    r = real.http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_unknown_model_is_404(real):
    r = real.http.post("/tokenize", json={"prompt": "a", "model": "gpt-4o"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_declared_in_openapi(live):
    doc = live.http.get("/openapi.json").json()
    for path in ("/tokenize", "/detokenize"):
        assert set(doc["paths"][path]["post"]["responses"]) == {"200", "400", "404", "413", "500", "503"}
    tokens = doc["components"]["schemas"]["DetokenizeRequest"]["properties"]["tokens"]
    assert tokens["items"]["maximum"] == 256 and tokens["minItems"] == 1  # the fake's vocabulary
    assert live.http.post("/detokenize", json={"tokens": [104, 105]}).json() == {"prompt": "hi"}
