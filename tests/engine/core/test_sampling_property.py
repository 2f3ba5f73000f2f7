"""The sampler on any logits and any valid parameters: a token id in [0, V) or RequestFailed, never a crash.

Hypothesis draws logit rows with NaN, +-inf, huge and tiny entries, in float32, bfloat16 and float16, and
temperatures down to 1e-300; a few fixed cases pin down what the properties alone would not (greedy is
argmax on finite logits, +inf entries win, a tiny temperature is greedy, the distribution is unchanged).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api.errors import RequestFailed
from engine.api.protocol import SamplingParams
from engine.core.sampling import NO_FINITE_LOGITS, make_generator, sample

SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, 1e30, -1e30, 88.0, -88.0]
entry = st.one_of(st.floats(-1e4, 1e4, allow_nan=False), st.sampled_from(SPECIAL))
rows = st.lists(entry, min_size=1, max_size=40)
dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
temperatures = st.one_of(
    st.just(0.0),
    st.sampled_from([1e-300, 5e-324, 1e-8, 2.0]),
    st.floats(1e-6, 2.0, exclude_min=False),
)
params = st.builds(
    SamplingParams,
    temperature=temperatures,
    top_p=st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
    top_k=st.integers(0, 50),
    seed=st.integers(0, 2**32),
)
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def choosable(x: torch.Tensor) -> bool:
    return bool((~torch.isnan(x) & (x > float("-inf"))).any())


@fast
@given(rows, dtypes, params)
def test_any_logits_give_a_valid_token_or_a_clear_error(values, dtype, p):
    logits = torch.tensor(values).to(dtype)  # out-of-range values become +-inf in the smaller dtypes
    gen = make_generator(p, torch.device("cpu"), 0)
    if not choosable(logits.float()):
        with pytest.raises(RequestFailed, match="no finite logits"):
            sample(logits, p, gen)
        return
    tok = sample(logits, p, gen)
    assert 0 <= tok < len(values)
    chosen = float(logits[tok])
    assert not math.isnan(chosen) and chosen > float("-inf")
    if bool((logits == float("inf")).any()):
        assert chosen == float("inf")


@fast
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40), dtypes)
def test_greedy_is_argmax_on_finite_logits(values, dtype):
    logits = torch.tensor(values).to(dtype)
    assert sample(logits, SamplingParams(temperature=0.0), None) == int(torch.argmax(logits))


def test_tiny_temperature_is_greedy():
    logits = torch.tensor([0.5, 3.0, 2.9999, -1.0])
    for t in (1e-300, 5e-324, 1e-30):
        p = SamplingParams(temperature=t, top_p=0.9, top_k=3)
        assert {sample(logits, p, make_generator(p, torch.device("cpu"), s)) for s in range(20)} == {1}


def test_all_nan_and_all_minus_inf_rows_are_refused():
    for row in ([float("nan")] * 5, [float("-inf")] * 5, [float("nan"), float("-inf")]):
        for p in (SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, top_p=0.5, top_k=2)):
            with pytest.raises(RequestFailed, match=re.escape(NO_FINITE_LOGITS)):
                sample(torch.tensor(row), p, make_generator(p, torch.device("cpu"), 1))


def test_plus_inf_entries_share_the_mass():
    logits = torch.tensor([1.0, float("inf"), 5.0, float("inf"), float("nan")])
    p = SamplingParams(temperature=1.0)
    seen = {sample(logits, p, make_generator(p, torch.device("cpu"), s)) for s in range(40)}
    assert seen == {1, 3}


def test_ordinary_sampling_keeps_its_distribution():
    torch.manual_seed(0)
    logits = torch.randn(6) * 2
    p = SamplingParams(temperature=0.8, top_k=4, top_p=0.9)
    gen = make_generator(p, torch.device("cpu"), 123)
    n = 4000
    counts = torch.bincount(torch.tensor([sample(logits, p, gen) for _ in range(n)]), minlength=6).double()
    # reference: the textbook definition on the same logits (temperature, then top-k, then top-p)
    x = logits.double() / p.temperature
    x[x < torch.topk(x, p.top_k).values[-1]] = float("-inf")
    probs = torch.softmax(x, -1)
    sorted_p, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(sorted_p, -1) - sorted_p) <= p.top_p
    ref = torch.zeros(6, dtype=torch.float64)
    ref[order[keep]] = sorted_p[keep] / sorted_p[keep].sum()
    assert torch.all(counts[ref == 0] == 0)
    assert torch.allclose(counts / n, ref, atol=0.03)


@fast
@given(st.lists(st.tuples(rows, params), min_size=1, max_size=6))
def test_a_batch_of_draws_resolves_like_each_row_alone(batch):
    """`resolve` over a step's draws gives each row what `sample` gives it alone: the same token (the same
    seed), or RequestFailed for that row only."""
    from engine.core.sampling import draw, resolve

    draws, alone = [], []
    for values, p in batch:
        x = torch.tensor(values, dtype=torch.float32)
        draws.append(draw(x, p, make_generator(p, torch.device("cpu"), 0)))
        try:
            alone.append(sample(x, p, make_generator(p, torch.device("cpu"), 0)))
        except RequestFailed as err:
            alone.append(err)
    got = resolve(draws)
    assert len(got) == len(batch)
    for g, a in zip(got, alone, strict=True):
        if isinstance(a, RequestFailed):
            assert isinstance(g, RequestFailed) and g.message == a.message == NO_FINITE_LOGITS
        else:
            assert g == a and isinstance(g, int)
