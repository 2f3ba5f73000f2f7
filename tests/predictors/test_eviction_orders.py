"""The eviction orders beyond the engine's LRU, on hand-made cases and random traces (CPU, pure Python).

- every order keeps pinned experts, even when they are its preferred victims;
- Belady's hit rate is never below `predicted`'s (nor LRU's, LFU's) on random traces, whatever the scores;
- `predicted` evicts the lowest-scored resident of any layer, ties to the least recently touched, and is fed
  the workload's scores by `replay` (refused without them, and by the CLI without a bundle).
"""

from __future__ import annotations

import numpy as np
import pytest

from predictors.eviction import LFU, LRU, Belady, Predicted
from predictors.sim_cache import SimCache
from predictors.sim_policies import PolicyRun
from predictors.simulate import SimulateError, Workload, replay, summarize
from tests.sim_workloads import random_workload


def _hit(w: Workload, slots: int, eviction: str) -> float:
    counters = replay(w, slots, eviction, PolicyRun("none", "none"))
    return summarize(counters, w.steps, None, None)["hit_rate"]


@pytest.mark.parametrize("seed", range(5))
def test_belady_never_below_the_other_orders_on_random_traces(seed):
    w = random_workload(seed, scores=True)
    rng = np.random.default_rng(seed)
    shuffled = [rng.random(t.shape).astype(np.float32) for t in w.scores]  # scores that know nothing
    for slots in (2, 4, 7, 12, 20, 35):
        b = _hit(w, slots, "belady")
        for eviction in ("lru", "lfu", "predicted"):
            assert b >= _hit(w, slots, eviction), (slots, eviction)
        w.scores, hinted = shuffled, w.scores
        assert b >= _hit(w, slots, "predicted"), (slots, "predicted, random scores")
        w.scores = hinted


def _orders():
    """Each order with the pinned experts (layer 0: 0 and 1) as its first choice of victim."""
    predicted = Predicted()
    predicted.set_scores(0, [0.0] * 4)
    predicted.set_scores(1, [0.9] * 4)
    # Belady: layer 1's experts are used again at every later step, layer 0's never.
    future = [(t, [(1, t % 4)]) for t in range(2, 40)]
    return [LRU(), LFU(half_life=0), predicted, Belady(future)]


@pytest.mark.parametrize("order", _orders(), ids=lambda o: o.name)
def test_every_order_keeps_pinned_experts(order):
    cache = SimCache(3, 2, order)
    cache.prefetch(0, [0, 1])  # copied and pinned until layer 0 routes
    for t in range(2, 40):
        cache.now = t
        cache.route(1, [t % 4])  # one free slot: every new expert evicts
        assert {(0, 0), (0, 1)} <= cache._resident, t
    assert cache.counters.misses[1] == 38  # four experts cycling through one slot
    assert order.victim(lambda key: key[0] == 0) == next(k for k in cache._resident if k[0] == 1)
    assert order.victim(lambda key: True) is None


def _resident_after(order, steps: list[tuple[int, int]], slots: int) -> set:
    cache = SimCache(slots, 2, order)
    for t, (layer, e) in enumerate(steps):
        cache.now = t
        cache.route(layer, [e])
    return cache._resident


def test_predicted_evicts_the_lowest_scored_expert():
    order = Predicted()
    order.set_scores(0, [0.5, 0.1, 0.7, 0.9])
    order.set_scores(1, [0.3, 0.2, 0.6, 0.8])
    # 3 slots hold (0,0) (0,1) (1,0); (1,1) evicts (0,1), the lowest score of either layer.
    assert _resident_after(order, [(0, 0), (0, 1), (1, 0), (1, 1)], 3) == {(0, 0), (1, 0), (1, 1)}
    # New scores re-rank the residents: layer 0's tap now rates 0 lowest of all.
    order.set_scores(0, [0.05, 0.1, 0.7, 0.9])
    assert order.victim(lambda key: False) == (0, 0)


def test_predicted_breaks_ties_by_recency():
    order = Predicted()
    order.set_scores(0, [0.4] * 4)
    # 0 was touched again after 1: the equal scores fall to the least recently touched, 1.
    assert _resident_after(order, [(0, 0), (0, 1), (0, 0), (0, 2)], 2) == {(0, 0), (0, 2)}
    # An unscored layer counts 0: its expert goes first.
    order2 = Predicted()
    order2.set_scores(0, [0.4] * 4)
    assert _resident_after(order2, [(1, 3), (0, 0), (0, 1)], 2) == {(0, 0), (0, 1)}


def test_replay_feeds_each_layers_scores_at_its_tap():
    """One layer, 2 slots: with scores that rate the next expert high and the others low, `predicted`
    keeps what comes next; without scores it is refused."""
    trace = [0, 1, 2, 0, 1, 2, 0, 1, 2]  # LRU misses every step at 2 slots
    scores = np.full((len(trace), 3), 0.1, dtype=np.float32)
    for s in range(len(trace) - 1):
        scores[s, trace[s + 1]] = 0.9  # the tap at step s rates step s+1's expert
    w = Workload("hand", "routing", 1, 3, 1, [[[e] for e in trace]], len(trace), 1, scores=[scores])
    none = PolicyRun("none", "none")
    assert replay(w, 2, "lru", none).misses == [9]
    assert replay(w, 2, "predicted", none).misses[0] < 9
    assert replay(w, 2, "predicted", none).misses == replay(w, 2, "belady", none).misses
    w.scores = None
    with pytest.raises(SimulateError, match="predictor scores"):
        replay(w, 2, "predicted", none)


def test_a_step_of_several_rows_takes_each_experts_best_score():
    scores = np.array([[0.1, 0.8], [0.7, 0.2], [0.3, 0.3]], dtype=np.float32)
    w = Workload("rows", "routing", 1, 2, 1, [[[0], [1]]], 2, 1, rows=[(0, 2), (2, 3)], scores=[scores])
    assert w.step_scores(0, 0).tolist() == pytest.approx([0.7, 0.8])
    assert w.step_scores(1, 0).tolist() == pytest.approx([0.3, 0.3])


def test_the_cli_runs_predicted_with_a_bundle_and_refuses_it_without(tmp_path):
    import json

    import torch
    from predictor_fixtures import write_synthetic_traces
    from typer.testing import CliRunner

    from engine.prefetch.nets import PredictorBank
    from predictors.bundle import save_bundle
    from predictors.cli import app

    traces = write_synthetic_traces(tmp_path / "traces", n_prompts=4, tokens=12, layers=2)
    torch.manual_seed(0)
    bank = PredictorBank(2, d_model=16, num_experts=8, num_layers=2, hidden=8)
    bundle = save_bundle(tmp_path / "bundle", bank, {"fingerprint": "synthetic-0", "loss": "wbce"})

    def invoke(*args):
        return CliRunner().invoke(
            app, ["simulate", "--traces", str(traces), *map(str, args), "--no-progress"]
        )

    r = invoke("--policies", "none", "--eviction", "lru,predicted")
    assert r.exit_code == 2 and "--predictors" in r.output
    r = invoke("--predictors", bundle, "--policies", "none,exact", "--eviction", "predicted,belady",
               "--fractions", "0.25,0.5", "--out", tmp_path / "out")  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "simulate.json").read_text())
    assert {(row["eviction"], row["policy"]) for row in doc["results"]} == {
        (e, p) for e in ("predicted", "belady") for p in ("none", "exact")
    }
    assert "predicted_eviction_scores" in doc
    for f in (0.25, 0.5):
        rows = {
            r["eviction"]: r
            for r in doc["results"]
            if r["policy"] == "none" and r["asked"] == f"fraction {f:g}"
        }
        assert rows["belady"]["hit_rate"] >= rows["predicted"]["hit_rate"]


def test_the_cli_simulates_lookahead_bundles_and_the_oracle_ahead(tmp_path):
    """`simulate` takes a bundle trained --distance 1 and --oracle-ahead 1 (the oracle one layer early
    misses no more than none), and refuses a distance past the trace's layers."""
    import json

    import torch
    from predictor_fixtures import write_synthetic_traces
    from typer.testing import CliRunner

    from engine.prefetch.nets import PredictorBank
    from predictors.bundle import save_bundle
    from predictors.cli import app

    traces = write_synthetic_traces(tmp_path / "traces", n_prompts=4, tokens=12, layers=3)
    torch.manual_seed(0)
    bank = PredictorBank(2, d_model=16, num_experts=8, num_layers=2, hidden=8)
    meta = {"fingerprint": "synthetic-0", "loss": "wbce", "distance": 1}
    bundle = save_bundle(tmp_path / "bundle", bank, meta)
    args = [
        "simulate",
        "--traces",
        str(traces),
        "--predictors",
        str(bundle),
        "--policies",
        "none,exact,oracle",
    ]
    args += [
        "--oracle-ahead",
        "1",
        "--eviction",
        "lru",
        "--fractions",
        "0.75",
        "--out",
        str(tmp_path / "out"),
    ]
    r = CliRunner().invoke(app, [*args, "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "simulate.json").read_text())
    by = {row["policy"]: row for row in doc["results"]}
    assert set(by) == {"none", "exact", "oracle"}
    assert by["oracle"]["counts"]["misses"] <= by["none"]["counts"]["misses"]
    far = CliRunner().invoke(app, [*args[:-8], "--oracle-ahead", "3", "--no-progress"])
    assert far.exit_code != 0 and "oracle ahead 3" in far.output


class _EagerLFU(LFU):
    """LFU pushing a heap entry on every touch (the order before touches became lazy)."""

    monotone = False


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("half_life", [0, 3.0])
def test_lfu_with_lazy_touches_picks_the_victims_of_eager_pushes(seed, half_life):
    rng = np.random.default_rng(seed)
    lazy, eager = LFU(half_life=half_life), _EagerLFU(half_life=half_life)
    resident: set = set()
    pinned: set = set()
    victims = 0
    for now in range(3000):
        key = (int(rng.integers(3)), int(rng.integers(12)))
        op = rng.random()
        if key not in resident:
            for o in (lazy, eager):
                o.use(key, now) if op < 0.5 else None
                o.insert(key, now)
            resident.add(key)
        elif op < 0.6:
            routed = bool(rng.random() < 0.8)
            for o in (lazy, eager):
                o.touch(key, now, routed)
        elif op < 0.7:
            pinned ^= {key}
        if len(resident) > 20 or op > 0.95:
            held = frozenset(pinned)
            a, b = (o.victim(held.__contains__) for o in (lazy, eager))
            assert a == b, now
            if a is not None:
                victims += 1
                for o in (lazy, eager):
                    o.remove(a)
                resident.discard(a)
                pinned.discard(a)
        assert lazy.keys() == eager.keys()
    assert victims > 500
    assert len(lazy._heap) <= len(eager._heap)  # one live entry per resident, not one per touch
