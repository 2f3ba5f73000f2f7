"""The trace-driven cache simulator (CPU).

- the simulator's cache equals the engine's: the real engine (`ModelRunner`, batch-1 greedy, prefill then
  decode) and the simulator replaying its recorded routing give the same per-layer counters, for every
  policy and every eviction order the engine has (`MOE_EVICTION` lru and lfu), at cache sizes where
  prefill chunks and where it does not;
- Belady's hit rate is never below LRU's or LFU's (random traces with locality, several sizes, and the
  routing of a real engine run);
- each eviction order on a hand-made trace, LFU's decay, and the bisection of the capacity answer.
"""

from __future__ import annotations

import pytest
import torch

from engine.api.config import EngineConfig
from engine.api.policies import POLICIES
from engine.api.stats import PER_LAYER
from engine.experts.hooks import Listener
from engine.model.fingerprint import model_fingerprint, router_params
from engine.model.loader import CacheBudget, load_checkpoint
from engine.prefetch.build import build_prefetcher
from engine.prefetch.nets import PredictorBank
from engine.prefetch.routing_trace import RoutingRecorder
from engine.runner.runner import ModelRunner
from predictors.eviction import LFU, LRU, Belady
from predictors.sim_cache import SimCache
from predictors.sim_policies import PolicyRun, policy_runs
from predictors.simulate import SimulateError, Workload, replay, smallest_cache, summarize
from tests.sim_workloads import random_workload

NEW = 12


# ----------------------------------------------------------------------------- engine equality
LFU_HALF_LIFE = 2.0  # tokens: short, so the decay matters within the test's 13 steps


def _engine_run(
    checkpoint,
    policy: str,
    fraction: float,
    prompt: list[int],
    tmp_path,
    eviction: str = "lru",
    ahead: int = 0,
):
    """Greedy batch-1 decode on the real engine with `policy`; returns (om, recorder, x per layer-step).
    `ahead`: the predictor bank's distance (predictor policies) or MOE_ORACLE_AHEAD (oracle)."""
    budget = CacheBudget(fraction=fraction, eviction=eviction, lfu_half_life=LFU_HALF_LIFE)
    om = load_checkpoint(checkpoint, torch.device("cpu"), torch.float32, budget)
    config, bank = EngineConfig(policy=policy), None
    if policy == "oracle":  # the engine's oracle replays an identical earlier run
        first = load_checkpoint(
            checkpoint, torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction)
        )
        rec0 = RoutingRecorder(len(first.layers))
        first.cache.listen(Listener(route=rec0.record))
        ModelRunner(first).greedy(prompt, NEW)
        path = rec0.save(tmp_path / "routing.json", model_fingerprint(first.model))
        config = EngineConfig(policy=policy, oracle_trace=str(path), oracle_ahead=ahead)
    if policy in ("exact", "overprovision", "top1", "adaptive"):
        torch.manual_seed(0)
        d, e = om.model.config.hidden_size, om.store.layout.num_experts
        bank = PredictorBank(2, d, e, len(om.layers) - ahead, hidden=32).eval()
    manifest = {"loss": "wbce", "distance": ahead}
    pf = build_prefetcher(om, config, bank=bank, manifest=manifest) if policy != "none" else None
    rec = RoutingRecorder(len(om.layers))
    om.cache.listen(
        Listener(route=rec.record)
    )  # as engine/frontend/async_engine.py does for MOE_RECORD_ROUTING
    xs: list[list[torch.Tensor]] = [[] for _ in om.layers]
    hooks = [
        lay.input_layernorm.register_forward_hook(
            lambda _m, _a, out, i=lay.index: xs[i].append(out.detach().reshape(-1, out.shape[-1]).clone())
        )
        for lay in om.layers
    ]
    ModelRunner(om).greedy(prompt, NEW)
    for h in hooks:
        h.remove()
    if pf is not None:
        pf.remove()
    return om, rec, xs, bank


def _workload(om, rec: RoutingRecorder, xs) -> Workload:
    """The engine run as the simulator sees it: its recorded layer-steps, with the tap inputs of each."""
    rows, a = [], 0
    for x in xs[0]:
        rows.append((a, a + x.shape[0]))
        a += x.shape[0]
    routers = {}
    for lay in om.layers:
        for name, p in router_params(lay.router):
            routers[f"router.{lay.index}" if name == "weight" else f"router_bias.{lay.index}"] = p.detach()
    return Workload(
        source="engine run",
        kind="routing",
        num_layers=len(om.layers),
        num_experts=om.store.layout.num_experts,
        top_k=om.top_k,
        routed=rec.layers,
        steps=len(rec.layers[0]),
        streams=1,
        inputs=lambda i: torch.cat(xs[i]),
        routers=lambda: routers,
        rows=rows,
    )


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_simulated_counters_equal_the_engine_for_every_policy(
    family, fraction, eviction, checkpoints, references, tmp_path
):
    """Every counter of every layer matches exactly, for all seven policies. At 0.05 (the minimum, top-k = 2
    slots, where crosslayer may prefetch nothing) the cache is smaller than a prefill's routed set, so the
    engine's chunked acquire is exercised; at 0.5 it is not. The predictor policies run the same random bank on the same tap inputs
    (the simulator in one batch over all rows, the engine per step: equal here in float32)."""
    prompt = references[family][0][:10]
    differs = []  # policies whose engine counters under lfu are not what lru would have given
    for policy in POLICIES:
        om, rec, xs, bank = _engine_run(checkpoints[family], policy, fraction, prompt, tmp_path, eviction)
        w = _workload(om, rec, xs)
        assert w.steps == NEW + 1  # one prefill and NEW decode steps
        chunked = max(len(st) for lay in rec.layers for st in lay) > om.cache.capacity
        if fraction in (0.05, 0.5):
            assert chunked == (fraction == 0.05)
        (run,) = policy_runs(w, [policy], bank, {"loss": "wbce"})
        sim = replay(
            w,
            om.cache.capacity,
            eviction,
            run,
            preload_full=False,
            lookahead=False,
            lfu_half_life=LFU_HALF_LIFE,
        )
        eng = om.counters
        for name in PER_LAYER:
            assert getattr(sim, name) == getattr(eng, name), f"{policy}: {name}"
        assert sim.slots_used == eng.slots_used, policy
        if policy != "none" and not (policy == "crosslayer" and om.cache.capacity == om.top_k):
            assert sum(eng.routed_scored) > 0, policy
        if policy in ("exact", "adaptive"):
            assert sum(eng.prefetch_issued) > 0, policy
        if eviction == "lfu":
            lru = replay(w, om.cache.capacity, "lru", run, preload_full=False, lookahead=False)
            differs += [policy] if any(getattr(lru, n) != getattr(eng, n) for n in PER_LAYER) else []
    if eviction == "lfu" and fraction == 0.25:  # the setting changes what is evicted: not LRU in disguise
        assert differs, "lfu evicted exactly as lru under every policy"


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("policy", ["exact", "adaptive", "oracle"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_simulated_counters_equal_the_engine_one_layer_ahead(
    family, policy, fraction, checkpoints, references, tmp_path
):
    """Predictions issued one MoE layer early (a bundle trained --distance 1; MOE_ORACLE_AHEAD=1): every
    counter of every layer matches, the first layer's predictions are absent and the pins are limited."""
    prompt = references[family][0][:10]
    om, rec, xs, bank = _engine_run(checkpoints[family], policy, fraction, prompt, tmp_path, ahead=1)
    w = _workload(om, rec, xs)
    manifest = {"loss": "wbce", "distance": 1}
    (run,) = policy_runs(w, [policy], bank, manifest, oracle_ahead=1)
    assert run.shift == 1
    sim = replay(w, om.cache.capacity, "lru", run, preload_full=False, lookahead=False)
    eng = om.counters
    for name in PER_LAYER:
        assert getattr(sim, name) == getattr(eng, name), f"{policy}: {name}"
    assert eng.routed_scored[0] == 0
    if om.cache.capacity > om.top_k:
        assert sum(eng.routed_scored) > 0 and sum(eng.prefetch_issued) + sum(eng.hits_prefetched) > 0
    with pytest.raises(SimulateError, match=f"oracle ahead {w.num_layers}: the trace has"):
        policy_runs(w, ["oracle"], oracle_ahead=w.num_layers)
    short = PredictorBank(2, 4, 4, w.num_layers - 2, hidden=4)  # one predictor too few for distance 1
    with pytest.raises(SimulateError, match="predicting 1 ahead"):
        policy_runs(w, ["exact"], short, manifest)


# ----------------------------------------------------------------------------- Belady is the limit
def _hit(w: Workload, slots: int, eviction: str, policy: str = "none") -> float:
    counters = replay(w, slots, eviction, PolicyRun(policy, policy))
    return summarize(counters, w.steps, None, None)["hit_rate"]


@pytest.mark.parametrize("seed", range(6))
def test_belady_never_below_lru_or_lfu_on_random_traces(seed):
    w = random_workload(seed)
    for slots in (2, 4, 7, 12, 20, 35):
        b = _hit(w, slots, "belady")
        assert b >= _hit(w, slots, "lru") and b >= _hit(w, slots, "lfu"), slots


def test_belady_never_below_lru_or_lfu_on_an_engine_run(checkpoints, references, tmp_path):
    om, rec, xs, _ = _engine_run(checkpoints["qwen3_moe"], "none", 1.0, references["qwen3_moe"][0], tmp_path)
    w = _workload(om, rec, xs)
    for slots in range(2, w.total_experts + 1, 2):
        b = _hit(w, slots, "belady")
        assert b >= _hit(w, slots, "lru") and b >= _hit(w, slots, "lfu"), slots


# ----------------------------------------------------------------------------- the orders by hand
def _misses(order, trace: list[int], slots: int) -> list[int]:
    """Missed experts of a one-layer, one-expert-per-step trace."""
    cache = SimCache(slots, 1, order)
    out = []
    for t, e in enumerate(trace):
        cache.now = t
        before = cache.counters.misses[0]
        cache.route(0, [e])
        if cache.counters.misses[0] > before:
            out.append(e)
    return out


def test_each_eviction_order_on_a_hand_made_trace():
    trace = [0, 1, 0, 2, 0, 3, 1, 0]
    future = [(t, [(0, e)]) for t, e in enumerate(trace)]
    # LRU, 2 slots: 2 evicts 1, 3 evicts 2, 1 evicts 0, 0 evicts 3.
    assert _misses(LRU(), trace, 2) == [0, 1, 2, 3, 1, 0]
    # LFU without decay: 0 is used most and stays; each newcomer evicts the other once-used expert.
    assert _misses(LFU(half_life=0), trace, 2) == [0, 1, 2, 3, 1]
    # Belady: 2 evicts 1 (next use 6, after 0's 4); 3 evicts 2 (never again); 1 evicts 3.
    assert _misses(Belady(future), trace, 2) == [0, 1, 2, 3, 1]


def test_lfu_decay_forgets_old_uses():
    trace = [0, 0, 0, 1, 1, 2, 1, 0]  # 0 was hot long ago, 1 is hot now
    assert _misses(LFU(half_life=0), trace, 2) == [0, 1, 2, 1]  # 2 evicts 1 (2 uses < 0's 3)
    assert _misses(LFU(half_life=0.5), trace, 2) == [0, 1, 2, 0]  # 2 evicts the stale 0


def test_capacity_bisects_on_slots_between_simulated_sizes():
    w = random_workload(0)
    hit = {s: _hit(w, s, "lru") for s in range(2, w.total_experts + 1)}
    target = 0.75
    want = min(s for s, h in hit.items() if h >= target)
    probed = []

    def probe(s: int) -> float:
        probed.append(s)
        return hit[s]

    known = {s: hit[s] for s in (4, 9, 18, 27, 36)}
    assert smallest_cache(probe, known, target, 2, 36) == (want, hit[want])
    assert len(probed) <= 4  # log2 of the bracket, not a scan
    assert smallest_cache(probe, {36: 0.5}, target, 2, 36) is None
