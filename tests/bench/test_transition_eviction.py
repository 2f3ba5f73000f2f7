"""`bench/transition_eviction.py`: the next-token transition order, its fit, its folds and its summary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.transition_eviction import Transition, fit_transitions, folds, summarise  # noqa: E402
from predictors.sim_policies import PolicyRun  # noqa: E402
from predictors.simulate import Workload, replay  # noqa: E402


def _cycles(n: int = 300) -> np.ndarray:
    """Two layers, one expert a step out of three, each layer cycling 0 -> 1 -> 2 (the second one ahead)."""
    steps = np.arange(n)
    return np.stack([(steps % 3)[:, None], ((steps + 1) % 3)[:, None]])  # [L=2, N, k=1]


def test_the_fit_counts_what_follows_what_and_keeps_a_base_rate():
    m = fit_transitions(_cycles(), [(0, 300)], num_experts=3)
    assert m.shape == (2, 3, 3)
    assert m[0, 0, 1] > 0.98 and m[0, 1, 2] > 0.98 and m[0, 2, 0] > 0.98  # 0 -> 1 -> 2 -> 0
    assert 0 < m[0, 0, 0] < 0.01  # never seen after 0, but not impossible
    spans = fit_transitions(_cycles(), [(0, 2), (2, 4)], num_experts=3)  # pairs inside each span only
    assert spans[0, 1, 2] < 0.5 and spans[0, 0, 1] > 0.5  # 0->1 and 2->3 counted, the pair across not


def test_a_victim_is_the_resident_least_likely_next():
    m = np.full((1, 4, 4), 0.1, dtype=np.float32)
    m[0, 0] = [0.0, 0.9, 0.05, 0.6]  # after 0: 1 surely, 3 likely, 2 hardly
    order = Transition(m)
    for e in (1, 2, 3):
        order.insert((0, e), now=0)
    order.use((0, 0), now=5)  # the layer routed 0 (0 itself not resident)
    assert order.victim(lambda key: False) == (0, 2)
    assert order.victim(lambda key: key == (0, 2)) == (0, 3)  # pinned ones are skipped


@pytest.mark.parametrize("slots", [3, 4, 5])
def test_on_routing_that_cycles_it_misses_less_than_lru_and_lfu(slots):
    r = _cycles()
    w = Workload(source="toy", kind="traces", num_layers=2, num_experts=3, top_k=1,
                 routed=[np.sort(r[layer], axis=1) for layer in range(2)], steps=300, streams=1)  # fmt: skip
    none = PolicyRun("none", "none")
    misses = {
        name: sum(replay(w, slots, name, none, preload_full=False).misses)
        for name in ("lru", "lfu", "belady")
    }
    order = Transition(fit_transitions(r, [(0, 300)], num_experts=3))
    misses["transition"] = sum(replay(w, slots, "lru", none, preload_full=False, order=order).misses)
    assert misses["lru"] == misses["lfu"] == 600  # a cycle longer than the cache: every step misses
    assert misses["belady"] <= misses["transition"] < 0.9 * misses["lru"]


def test_two_folds_replay_every_token_once_and_the_summary_sums_them():
    offsets = np.array([0, 10, 25, 40, 60])
    (train_a, test_a), (train_b, test_b) = folds(offsets)
    assert test_a == (25, 60) and train_a == [(0, 10), (10, 25)]
    assert test_b == (0, 25) and train_b == [(25, 40), (40, 60)]
    parts = [{"twin": "t", "fraction": 0.5, "eviction": ev, "fold": f, "tokens": 10, "requests": 80,
              "misses": m} for ev, f, m in (("lfu", 0, 20), ("lfu", 1, 20), ("mix", 0, 10), ("mix", 1, 20))]  # fmt: skip
    rows = {r["eviction"]: r for r in summarise(parts)}
    assert rows["lfu"]["hit_rate"] == pytest.approx(0.75) and rows["lfu"]["misses_per_token"] == 2.0
    assert rows["mix"]["misses_vs_lfu"] == pytest.approx(0.75)


def test_lfu_half_lives_are_orders_of_their_own_listed_beside_lfu():
    parts = [{"twin": "t", "fraction": 0.5, "eviction": ev, "fold": 0, "tokens": 1, "requests": 8, "misses": 2}
             for ev in ("lfu@256", "belady", "lfu@16", "lfu", "lru")]  # fmt: skip
    assert [r["eviction"] for r in summarise(parts)] == ["lru", "lfu", "lfu@16", "lfu@256", "belady"]
