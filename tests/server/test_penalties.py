"""Penalties and logit_bias end to end: the REAL engine (built-in model, CPU), the real server, the openai SDK.

Greedy answers with penalties are compared with a greedy reference that applies OpenAI's / vLLM's
definitions by hand to the logits of a second copy of the model (`real_reference.Reference`).
"""

from __future__ import annotations

import torch

from tests.server.real_reference import Reference
from tests.server_harness import Live

MSG = [{"role": "user", "content": "Write a short sentence about ships."}]


def tokens(live: Live, **kw) -> list[bytes]:
    kw = {"temperature": 0, **kw}
    r = live.client.chat.completions.create(
        model=live.engine.model_card.id, messages=MSG, logprobs=True, **kw
    )
    return [bytes(e.bytes) for e in r.choices[0].logprobs.content]


def as_bytes(ref: Reference, ids: list[int]) -> list[bytes]:
    from engine.core.logprobs import TokenTable

    table = TokenTable(ref.engine.tokenizer)
    return [bytes(table(i)[1]) for i in ids]


def test_presence_and_frequency_penalties_match_the_reference(real, ref):
    f, p = 0.9, 1.3
    served = tokens(real, max_tokens=24, frequency_penalty=f, presence_penalty=p)

    def penalise(x: torch.Tensor, generated: list[int]) -> torch.Tensor:
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=x.numel()).double()
        return x - (f * counts + p * (counts > 0).double())

    ids = ref.prompt_ids(messages=tuple(MSG))
    expected = as_bytes(ref, ref.greedy(ids, len(served), penalise))
    assert served == expected
    assert served != tokens(real, max_tokens=24)  # the penalty changed the greedy answer


def test_huge_presence_penalty_never_repeats_a_token(real):
    plain = tokens(real, max_tokens=40)
    assert len(set(plain)) < len(plain)  # without it the built-in model repeats itself
    served = tokens(real, max_tokens=40, presence_penalty=2.0, frequency_penalty=2.0)
    assert len(set(served)) == len(served)


def test_repetition_penalty_matches_the_reference(real, ref):
    r = 1.8
    served = tokens(real, max_tokens=20, extra_body={"repetition_penalty": r})
    ids = ref.prompt_ids(messages=tuple(MSG))

    def penalise(x: torch.Tensor, generated: list[int]) -> torch.Tensor:
        seen = torch.zeros(x.numel(), dtype=torch.bool)
        seen[torch.tensor(ids + generated, dtype=torch.long)] = True
        return torch.where(seen, torch.where(x > 0, x / r, x * r), x)

    assert served == as_bytes(ref, ref.greedy(ids, len(served), penalise))


def test_logit_bias_forces_and_bans(real, ref):
    forced = 1000
    served = tokens(real, max_tokens=6, logit_bias={str(forced): 100})
    assert served == as_bytes(ref, [forced] * 6)
    banned = tokens(real, max_tokens=1)[0]
    first = int(torch.argmax(ref.runner.prefill(0, ref.prompt_ids(messages=tuple(MSG)))))
    assert as_bytes(ref, [first]) == [banned]
    assert banned not in tokens(real, max_tokens=12, logit_bias={str(first): -100})


def test_sampled_requests_apply_them_too(real):
    kw = {"temperature": 0.8, "seed": 5, "max_tokens": 8}
    assert set(tokens(real, logit_bias={"1000": 100}, **kw)) == set(
        tokens(real, logit_bias={"1000": 100}, max_tokens=1)
    )
    assert tokens(real, **kw, extra_body={"min_p": 1.0}) == tokens(real, max_tokens=8)  # min_p = 1 is greedy
