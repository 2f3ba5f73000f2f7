"""`bench/streamed_fills.py`: the streamed-step fill model and its admission by frequency."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.streamed_fills import LANDS_AFTER, frozen, markdown, replay, report, reuse  # noqa: E402


def _routing(rows: list[list[int]], layers: int = 1) -> np.ndarray:
    """[L, N, k] with every layer routing `rows[t]` at token t."""
    return np.array([rows] * layers, dtype=np.int32)


def test_a_miss_is_read_from_its_slot_from_three_steps_on():
    routed = _routing([[0, 1]] * 10, layers=2)
    c = replay(routed, 4, slots=8, order="lru", admission="always", fill_budget=100)
    assert c["requests"] == 10 * 2 * 2
    assert c["reads"] == LANDS_AFTER * 2 * 2  # tokens 0-2 read from host memory (0: missed, 1-2: landing)
    assert c["fills"] == 4 and c["dropped"] == 0  # each expert filled once, at the first publish


def test_frequency_admission_keeps_a_warm_expert_from_a_cold_one():
    # one slot; expert 0 at every token, expert 1 once at token 5
    rows = [[0]] * 20
    rows[5] = [1]
    always = replay(_routing(rows), 2, slots=1, order="lru", admission="always", fill_budget=10)
    freq = replay(_routing(rows), 2, slots=1, order="lru", admission="frequency", fill_budget=10)
    # always: 1 evicts 0 at token 5's publish, so 0 misses again until its new fill lands
    assert always["fills"] == 3 and freq["fills"] == 1 and freq["dropped"] == 1
    assert freq["hits"] > always["hits"]
    assert freq["reads"] == LANDS_AFTER + 1  # the cold start and the one read of expert 1


def test_the_fill_budget_drops_the_rest_until_they_miss_again():
    routed = _routing([[0, 1, 2]] * 8)
    c = replay(routed, 3, slots=3, order="lfu", admission="always", fill_budget=1)
    assert c["fills"] == 3  # one a publish: 0, then 1, then 2
    assert c["dropped"] == 2 + 1  # the first publish dropped two, the second one
    assert (
        c["reads"] == 3 + 3 + 3 + 2 + 1
    )  # token 0-2 all three, then each lands three publishes after its fill


def test_an_unknown_admission_is_refused():
    with pytest.raises(ValueError, match="admission"):
        replay(_routing([[0]]), 1, slots=1, order="lru", admission="never", fill_budget=1)


def test_the_report_compares_with_segmented_none_at_the_engines_rate():
    tm = {"step_ms": 4.0, "bandwidth_gbs": 55.0}
    rows_doc = [
        {"policy": "none", "eviction": "lru", "fraction": 0.5, "hit_rate": 0.6, "bytes_per_token": 1.0e9,
         "engine_tok_s": 1e3 / 24.0},
        {"policy": "none", "eviction": "lfu", "fraction": 0.5, "hit_rate": 0.62, "bytes_per_token": 0.9e9},
    ]  # fmt: skip
    doc = {"twins": [{"twin": "toy", "expert_bytes": 10_000_000, "time_model": tm, "rows": rows_doc}]}
    streamed = [
        {"twin": "toy", "fraction": 0.5, "eviction": e, "admission": "frequency", "tokens": 10,
         "requests": 100, "hits": 60, "reads": 40, "fills": 10, "dropped": 0}
        for e in ("lru", "lfu")
    ]  # fmt: skip
    out = {r["eviction"]: r for r in report(streamed, doc, read_gbs=50.0)}
    # streamed: 4 ms + (40 + 10) MB a token / 50 GB/s = 5 ms; segmented LRU moved 1,000 MB in 20 ms: 50 GB/s
    assert out["lru"]["streamed_ms"] == pytest.approx(5.0)
    assert out["lru"]["segmented_gbs_engine"] == pytest.approx(50.0)
    assert out["lru"]["segmented_ms"] == pytest.approx(24.0)
    assert out["lfu"]["segmented_ms"] == pytest.approx(4.0 + 900 / 50.0)  # LFU's bytes at LRU's rate
    assert out["lfu"]["streamed_over_segmented"] == pytest.approx(5.0 / 22.0)
    md = markdown(list(out.values()), "python bench/streamed_fills.py", 50.0)
    assert "| toy | 50% | lfu | frequency | 60.0% | 40 | 10 | 5.0 |" in md and "0.23 |" in md


def test_a_frozen_cache_is_fitted_on_the_other_half_of_the_prompts():
    # two prompts of 4 tokens: the first routes expert 0, the second expert 1; one slot
    routed = _routing([[0]] * 4 + [[1]] * 4)
    offsets = np.array([0, 4, 8])
    c = frozen(routed, offsets, 2, slots=1)
    assert c == {
        "requests": 8,
        "hits": 0,
        "reads": 8,
        "fills": 0,
        "dropped": 0,
    }  # each half holds the other's
    # expert 1 in both halves (routed most in each): held for both, expert 0's three uses are read
    both = _routing([[1, 0]] * 3 + [[1, 1]] * 5)
    assert frozen(both, offsets, 2, slots=1) == {
        "requests": 11,
        "hits": 8,
        "reads": 3,
        "fills": 0,
        "dropped": 0,
    }


def test_reuse_counts_within_a_prompt_only():
    routed = _routing([[0], [1], [0], [1], [0], [1]])
    r = reuse(routed, 2, np.array([0, 6]), gaps=(1, 2))
    assert r == {"base": 0.5, "1": 0.0, "2": 1.0}
    # a prompt boundary after token 2: the pair (2, 3) is not counted at gap 1
    r = reuse(_routing([[0], [0], [0], [1], [1], [1]]), 2, np.array([0, 3, 6]), gaps=(1,))
    assert r["1"] == 1.0
