"""Logprobs end to end: the REAL engine (built-in model, CPU) behind the real server, read with the openai SDK.

The served logprobs are checked against `log_softmax` of the logits that a second copy of the model gives
for the same prompt through its runner (`real_reference.Reference`): they are the raw model distribution,
so they do not move with temperature or penalties. Streamed and non-streamed answers agree, and the
completions shapes (echo with prompt logprobs, text offsets) are OpenAI's.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.core.logprobs import TokenTable
from tests.server_harness import Live

MSG = [{"role": "user", "content": "Write a short sentence about ships."}]
PROMPT = "The sea is"
TOL = 2e-4


def chat(live: Live, **kw):
    return live.client.chat.completions.create(model=live.engine.model_card.id, messages=MSG, **kw)


def test_chat_logprobs_are_the_model_distribution(real, ref):
    r = chat(real, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    ids = ref.prompt_ids(messages=tuple(MSG))
    expected_tokens = ref.greedy(ids, len(content), lambda x, _: x)
    table = TokenTable(ref.engine.tokenizer)
    for entry, tok, logits in zip(
        content, expected_tokens, ref.logits_along(ids, expected_tokens), strict=True
    ):
        lp = torch.log_softmax(logits, -1)
        text, raw = table(tok)
        assert (entry.token, entry.bytes) == (text, list(raw))
        assert entry.logprob == pytest.approx(float(lp[tok]), abs=TOL)
        top = entry.top_logprobs
        assert len(top) == 5
        values = [t.logprob for t in top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6
        assert values == pytest.approx(torch.topk(lp, 5).values.tolist(), abs=TOL)
        assert top[0].bytes == entry.bytes  # greedy: the chosen token is the most likely
        assert entry.logprob <= 0


def test_logprobs_do_not_move_with_temperature_or_penalties(real):
    greedy = chat(real, temperature=0, max_tokens=1, logprobs=True, top_logprobs=4)
    hot = chat(real, temperature=1.7, seed=3, max_tokens=1, logprobs=True, top_logprobs=4, presence_penalty=2)
    first = [(t.token, round(t.logprob, 4)) for t in greedy.choices[0].logprobs.content[0].top_logprobs]
    again = [(t.token, round(t.logprob, 4)) for t in hot.choices[0].logprobs.content[0].top_logprobs]
    assert first == again


def test_streamed_chat_logprobs_equal_non_streamed(real):
    kw = {"temperature": 0, "max_tokens": 16, "logprobs": True, "top_logprobs": 2}
    full = chat(real, **kw).choices[0].logprobs.content
    streamed = []
    for chunk in chat(real, stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content)

    def flat(entries):
        return [(e.token, e.bytes, [(t.token, t.bytes) for t in e.top_logprobs]) for e in entries]

    def values(entries):
        return [v for e in entries for v in [e.logprob, *(t.logprob for t in e.top_logprobs)]]

    assert flat(streamed) == flat(full) and len(full) == 16
    assert values(streamed) == pytest.approx(values(full))


def test_chat_logprobs_without_top_and_absent_by_default(real):
    r = chat(real, temperature=0, max_tokens=4, logprobs=True)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)
    assert chat(real, temperature=0, max_tokens=4).choices[0].logprobs is None


def completion(live: Live, **kw):
    return live.client.completions.create(model=live.engine.model_card.id, prompt=PROMPT, **kw)


def test_completion_logprobs_shape(real, ref):
    r = completion(real, temperature=0, max_tokens=8, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4 and top[token] == value  # the 3 most likely plus the chosen one
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    if not any(t.startswith("bytes:") for t in lp.tokens):
        assert "".join(lp.tokens).startswith(choice.text)
    ids = ref.prompt_ids(prompt=PROMPT)
    first = torch.log_softmax(ref.logits_along(ids, [0])[0], -1)
    assert lp.token_logprobs[0] == pytest.approx(float(first.max()), abs=TOL)


def test_completion_echo_with_logprobs(real, ref):
    r = completion(real, temperature=0, max_tokens=4, logprobs=2, echo=True)
    choice = r.choices[0]
    lp = choice.logprobs
    ids = ref.prompt_ids(prompt=PROMPT)
    p = len(ids)
    assert choice.text.startswith(PROMPT) and len(lp.tokens) == p + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens[:p]) == PROMPT
    assert lp.text_offset[:p] == [len("".join(lp.tokens[:i])) for i in range(p)]
    assert lp.text_offset[p] == len(PROMPT)
    for i in range(1, p):  # the prompt's logprobs: each token given the ones before it
        logits = ref.runner.prefill(0, ids[:i]).float()
        assert lp.token_logprobs[i] == pytest.approx(float(torch.log_softmax(logits, -1)[ids[i]]), abs=1e-3)
    plain = completion(real, temperature=0, max_tokens=4, logprobs=2)
    assert choice.text == PROMPT + plain.choices[0].text
    assert lp.token_logprobs[p:] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-3)


def test_streamed_completion_echo_equals_non_streamed(real):
    kw = {"temperature": 0, "max_tokens": 6, "logprobs": 1, "echo": True}
    full = completion(real, **kw).choices[0]
    text, tokens, values, offsets = "", [], [], []
    for chunk in completion(real, stream=True, **kw):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                values += c.logprobs.token_logprobs
                offsets += c.logprobs.text_offset
    assert text == full.text
    assert tokens == full.logprobs.tokens and offsets == full.logprobs.text_offset
    assert values == pytest.approx(full.logprobs.token_logprobs)


def test_echo_of_token_ids_and_without_logprobs(real, ref):
    ids = ref.prompt_ids(prompt=PROMPT)
    r = real.client.completions.create(
        model=real.engine.model_card.id, prompt=ids, max_tokens=3, temperature=0, echo=True
    )
    assert r.choices[0].text.startswith(PROMPT) and r.choices[0].logprobs is None
