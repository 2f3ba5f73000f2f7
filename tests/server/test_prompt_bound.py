"""A prompt that cannot fit the context window is refused before it is tokenised (engine.frontend.prompt_bound).

Through the real server and the real engine (built-in model, CPU): a 4 MiB prompt, which takes seconds of
tokenising, is a 400 `context_length_exceeded` well under a second. The bound itself is checked against
tokenizers built here: byte-level BPE, and pipelines that may shorten or drop text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine.api.config import EngineConfig
from engine.frontend.async_engine import AsyncEngine
from engine.frontend.prompt_bound import longest_token_bytes, max_prompt_chars, shrink_factor
from engine.model.builtin import builtin_tokenizer
from tests.server_harness import Live, live_server

BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(AsyncEngine.from_config(EngineConfig(device="cpu", seed=0)), timeout=60.0) as srv:
        yield srv


def test_an_oversized_prompt_is_refused_fast(live):
    prompt = "lorem ipsum dolor sit amet, " * ((BODY_LIMIT - 1024) // 28)
    for route, body in (
        ("/v1/completions", {"prompt": prompt, "max_tokens": 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}),
    ):
        t0 = time.perf_counter()
        r = live.http.post(route, json={"model": live.engine.model_card.id, **body})
        elapsed = time.perf_counter() - t0
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert "characters" in r.json()["error"]["message"]
        assert elapsed < 0.75, elapsed
    assert live.http.get("/health").status_code == 200


def test_a_prompt_under_the_bound_is_measured_in_tokens(live):
    bound = live.engine._max_prompt_chars
    card = live.engine.model_card
    assert bound == card.context_length * longest_token_bytes(live.engine.tokenizer)
    r = live.http.post(
        "/v1/completions", json={"model": card.id, "prompt": "ab " * (bound // 3), "max_tokens": 1}
    )
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"], r.text
    r = live.http.post("/v1/completions", json={"model": card.id, "prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text


def fast(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def bpe(**kw) -> Tokenizer:
    vocab = {"a": 0, "b": 1, "ab": 2, "[UNK]": 3}
    return Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="[UNK]", **kw))


def test_the_builtin_tokenizer_has_a_tight_bound():
    tok = builtin_tokenizer()
    assert shrink_factor(tok) == 1.0
    longest = longest_token_bytes(tok)
    assert 4 <= longest <= 64
    assert max_prompt_chars(tok, 1024) == 1024 * longest


def test_pipelines_that_may_shorten_text_widen_or_drop_the_bound():
    nfc = bpe(byte_fallback=True)
    nfc.normalizer = normalizers.NFC()
    assert shrink_factor(fast(nfc)) == 3.0
    nfkc = bpe(byte_fallback=True)
    nfkc.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert shrink_factor(fast(nfkc)) == 12.0
    dropping = bpe(byte_fallback=True)
    dropping.pre_tokenizer = pre_tokenizers.Whitespace()  # whitespace is removed, not tokenised
    assert shrink_factor(fast(dropping)) is None
    stripping = bpe(byte_fallback=True)
    stripping.normalizer = normalizers.Strip()
    assert max_prompt_chars(fast(stripping), 1024) is None
    fusing = bpe(fuse_unk=True)  # a run of unknown characters is one token
    assert shrink_factor(fast(fusing)) is None
