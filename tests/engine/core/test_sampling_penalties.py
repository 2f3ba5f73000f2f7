"""Penalties, logit_bias and min_p in `engine.core.sampling`, against references computed from the logits by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api.errors import RequestFailed
from engine.api.protocol import SamplingParams
from engine.core.sampling import SamplingState, make_generator, needs_state, sample, state_for

CPU = torch.device("cpu")


def state(p: SamplingParams, prompt: list[int], generated: list[int], vocab: int) -> SamplingState:
    s = SamplingState(p, prompt, vocab, CPU)
    for t in generated:
        s.accept(t)
    return s


def reference(logits: list[float], p: SamplingParams, prompt: list[int], generated: list[int]) -> list[float]:
    """The textbook definitions, one token at a time (vLLM's order: bias, repetition, frequency/presence)."""
    out = []
    bias = dict(p.logit_bias)
    for t, x in enumerate(logits):
        x += bias.get(t, 0.0)
        if t in prompt or t in generated:
            r = p.repetition_penalty
            x = x / r if x > 0 else x * r
        count = generated.count(t)
        x -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
        out.append(x)
    return out


def test_frequency_and_presence_penalties_match_openai():
    logits = [2.0, 1.5, -0.5, 3.0, 0.0]
    p = SamplingParams(frequency_penalty=0.7, presence_penalty=0.4)
    gen = [3, 3, 1, 3]
    got = state(p, [0, 2], gen, 5).apply(torch.tensor(logits, dtype=torch.float64))
    assert got.tolist() == pytest.approx(reference(logits, p, [], gen))
    assert got.tolist() == pytest.approx([2.0, 1.5 - 0.7 - 0.4, -0.5, 3.0 - 2.1 - 0.4, 0.0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_over_prompt_and_output():
    logits = [2.0, -1.0, 4.0, -3.0, 1.0]
    p = SamplingParams(repetition_penalty=2.0)
    got = state(p, [0, 1], [3], 5).apply(torch.tensor(logits, dtype=torch.float64))
    assert got.tolist() == pytest.approx([1.0, -2.0, 4.0, -6.0, 1.0])


def test_logit_bias_is_added():
    logits = [0.0, 1.0, 2.0]
    p = SamplingParams(logit_bias=((0, 5.0), (2, -100.0)))
    got = state(p, [], [], 3).apply(torch.tensor(logits, dtype=torch.float64))
    assert got.tolist() == pytest.approx([5.0, 1.0, -98.0])


def test_greedy_takes_the_penalised_argmax():
    logits = torch.tensor([5.0, 4.9, 0.0])
    p = SamplingParams(temperature=0.0, presence_penalty=0.5)
    assert sample(logits, p, None, state(p, [], [], 3)) == 0
    assert sample(logits, p, None, state(p, [], [0], 3)) == 1
    biased = SamplingParams(temperature=0.0, logit_bias=((2, 100.0),))
    assert sample(logits, biased, None, state(biased, [], [], 3)) == 2


def test_sampled_distribution_follows_the_penalised_logits():
    torch.manual_seed(1)
    logits = torch.randn(6)
    p = SamplingParams(
        temperature=0.9,
        frequency_penalty=1.0,
        presence_penalty=0.3,
        repetition_penalty=1.3,
        logit_bias=((5, 1.5),),
        seed=7,
    )
    prompt, gen = [0, 4], [1, 1, 2]
    s = state(p, prompt, gen, 6)
    g = make_generator(p, CPU, 0)
    n = 4000
    counts = torch.bincount(torch.tensor([sample(logits, p, g, s) for _ in range(n)]), minlength=6).double()
    ref = torch.softmax(
        torch.tensor(reference(logits.tolist(), p, prompt, gen), dtype=torch.float64) / 0.9, -1
    )
    assert torch.allclose(counts / n, ref, atol=0.03)


def test_min_p_drops_tokens_below_the_fraction_of_the_top_probability():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.12, 0.08]))
    p = SamplingParams(temperature=1.0, min_p=0.2)  # keeps p >= 0.1
    g = make_generator(p, CPU, 3)
    counts = torch.bincount(torch.tensor([sample(logits, p, g) for _ in range(4000)]), minlength=4).double()
    ref = torch.tensor([0.5, 0.3, 0.12, 0.0], dtype=torch.float64)
    assert counts[3] == 0
    assert torch.allclose(counts / 4000, ref / ref.sum(), atol=0.03)


def test_state_only_when_needed():
    logits = torch.zeros(4)
    assert state_for(None, SamplingParams(top_k=3, min_p=0.1), [1], logits) is None
    assert not needs_state(SamplingParams())
    made = state_for(None, SamplingParams(presence_penalty=1.0), [1], logits)
    assert made is not None and state_for(made, made.params, [1], logits) is made


SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, 1e30, -1e30]
entry = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from(SPECIAL))
penalised = st.builds(
    SamplingParams,
    temperature=st.one_of(st.just(0.0), st.floats(1e-6, 2.0), st.just(1e-300)),
    top_p=st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
    top_k=st.integers(0, 10),
    min_p=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    frequency_penalty=st.floats(-2.0, 2.0),
    presence_penalty=st.floats(-2.0, 2.0),
    repetition_penalty=st.one_of(st.just(1.0), st.floats(1e-3, 1e3)),
    logit_bias=st.lists(st.tuples(st.integers(0, 19), st.floats(-100.0, 100.0)), max_size=4).map(tuple),
    seed=st.integers(0, 2**32),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entry, min_size=20, max_size=20), penalised, st.lists(st.integers(0, 19), max_size=8))
def test_penalised_sampling_gives_a_valid_token_or_a_clear_error(values, p, history):
    logits = torch.tensor(values)
    s = state(p, history[:2], history[2:], 20)
    choosable = bool((~torch.isnan(logits) & (logits > float("-inf"))).any())
    if not choosable:
        with pytest.raises(RequestFailed, match="no finite logits"):
            sample(logits, p, make_generator(p, CPU, 0), s)
        return
    tok = sample(logits, p, make_generator(p, CPU, 0), s)
    assert 0 <= tok < 20
    chosen = float(logits[tok])
    assert not math.isnan(chosen) and chosen > float("-inf")
