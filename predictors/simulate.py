"""Trace-driven expert-cache simulation: replay recorded routing through a model of the engine's cache.

Input is a trace set from `moe-prefetch collect` (each prompt's tokens in order, replayed as batch-1
decode steps, one step per token, prompt after prompt through one cache) or a routing recording from
`MOE_RECORD_ROUTING` (each recorded layer-step set as it was: prefill and batched steps included). Each
step runs the engine's order for every MoE layer l: the tap's prefetch (for layer l, or for l + d with
`crosslayer`, a lookahead bundle or the oracle ahead), then the router's set through `SimCache.route` (`predictors.sim_cache`, the engine's
`ExpertCache` semantics), with eviction `lru`, `lfu`, `predicted` or `belady` (`predictors.eviction`).
`predicted` ranks residents by the bundle's scores (`predictor_scores`, on the workload), fed to the order at
each layer's tap under every policy (with `none` the predictor runs for eviction alone).

Each policy's predictions are computed up front (`predictors.sim_policies`: `PolicyRun`, `policy_runs`,
`predictor_scores`); `replay` hands them to the cache at each layer's tap, for layer l + the run's shift.

What it does not model: batches of several sequences (a trace replays one stream), copy/compute overlap
within a step (the time model below is two bounds), streamed decode steps (host reads, fills landing a
few steps later), prefill of the traced prompts (a trace replays prompt tokens as decode steps).

Time per token is modelled three ways from a resident step time and a host->device bandwidth:
`overlap_ms` = max(step, all copied bytes / bandwidth) (every copy hidden behind compute: the PCIe floor);
`serial_ms` = step + demand misses x expert bytes / bandwidth (prefetches hidden, each miss stalls);
`clock_ms`, the per-layer clock of segmented steps (`predictors.sim_timeline`: one copy engine, the host's
decision at each segment boundary), which alone sees when a copy was issued (lookahead, the oracle ahead).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.api.policies import INPUT_POLICIES
from engine.api.stats import PER_LAYER
from engine.experts.slots import slots_for_budget
from engine.prefetch.policies import ahead_limit
from predictors.eviction import DEFAULT_LFU_HALF_LIFE, build_order
from predictors.sim_cache import SimCache

log = logging.getLogger(__name__)

NEEDS_INPUTS = INPUT_POLICIES  # policies that read the pre-attention inputs


class SimulateError(ValueError):
    """The input cannot give what was asked (a policy that needs inputs or a bundle it lacks)."""


# ----------------------------------------------------------------------------- the workload
@dataclass
class Workload:
    """Routing to replay: `routed[l][s]` = the sorted distinct experts layer l routed at step s (a numpy
    row or a list); `inputs(l)` = layer l's pre-attention input rows [N, d] when stored, with step s owning
    rows `rows[s]` (None: row s); `routers()` = router.{i} [E, d] (and router_bias.{i}) when stored;
    `scores[l]` = the predictor's probabilities [N, E] at layer l's tap, for `predicted` eviction."""

    source: str
    kind: str  # "traces" | "routing"
    num_layers: int
    num_experts: int
    top_k: int
    routed: list
    steps: int
    streams: int  # prompts (traces) or 1 (a recording)
    fingerprint: str | None = None
    inputs: Callable[[int], torch.Tensor] | None = None
    routers: Callable[[], dict[str, torch.Tensor]] | None = None
    rows: list[tuple[int, int]] | None = None
    scores: list[np.ndarray] | None = None

    def step_routed(self, s: int, layer: int) -> list[int]:
        r = self.routed[layer][s]
        return r.tolist() if isinstance(r, np.ndarray) else list(r)

    def step_scores(self, s: int, layer: int) -> np.ndarray:
        """Layer `layer`'s scores at step s: its row, or each expert's best over the step's rows."""
        table = self.scores[layer]
        if self.rows is None:
            return table[s]
        a, b = self.rows[s]
        return table[a:b].max(axis=0)

    @property
    def total_experts(self) -> int:
        return self.num_layers * self.num_experts


def load_traces(directory: str | Path, max_tokens: int | None = None) -> Workload:
    """A trace set's tokens, prompt by prompt in storage order, as batch-1 decode steps."""
    from predictors.traces import TraceSet

    ts = TraceSet(directory)
    n = ts.samples if max_tokens is None else min(ts.samples, max_tokens)
    mask = torch.arange(ts.samples) < n
    routed = []
    for i in range(ts.num_layers):
        topk = ts.layer(i, mask).topk  # [N, k]
        routed.append(np.sort(topk.numpy().astype(np.int32), axis=1))
    streams = int(ts.prompt_ids()[:n].unique().numel())
    return Workload(
        source=str(directory),
        kind="traces",
        num_layers=ts.num_layers,
        num_experts=ts.num_experts,
        top_k=ts.top_k,
        routed=routed,
        steps=n,
        streams=streams,
        fingerprint=ts.fingerprint,
        inputs=lambda i: ts.layer(i, mask).x,
        routers=ts.routers,
    )


def load_recording(
    path: str | Path, num_experts: int | None = None, top_k: int | None = None, max_steps: int | None = None
) -> Workload:
    """A `MOE_RECORD_ROUTING` file's layer-steps in order. Without `num_experts`, the largest id seen + 1;
    without `top_k`, the smallest non-empty step set (a batch-1 decode step routes exactly k)."""
    from engine.prefetch.routing_trace import RoutingReplay

    layers = RoutingReplay.load(path).layers
    steps = min(len(s) for s in layers) if layers else 0
    if max_steps is not None:
        steps = min(steps, max_steps)
    if steps == 0:
        raise SimulateError(f"{path}: the recording holds no steps")
    if any(len(s) != len(layers[0]) for s in layers):
        log.warning("%s: layers recorded different step counts; replaying the first %d steps", path, steps)
    seen = [e for lay in layers for st in lay[:steps] for e in st]
    if num_experts is None:
        num_experts = max(seen) + 1
        log.warning(
            "%s: %d experts per layer assumed (largest id seen + 1); pass --model to be sure",
            path,
            num_experts,
        )
    elif seen and max(seen) >= num_experts:
        raise SimulateError(f"{path}: expert id {max(seen)} recorded, the model has {num_experts}")
    if top_k is None:
        top_k = min(len(st) for lay in layers for st in lay[:steps] if st)
    doc = json.loads(Path(path).read_text())
    return Workload(
        source=str(path),
        kind="routing",
        num_layers=len(layers),
        num_experts=num_experts,
        top_k=top_k,
        routed=[[sorted(set(st)) for st in lay[:steps]] for lay in layers],
        steps=steps,
        streams=1,
        fingerprint=doc.get("fingerprint"),
    )


# ----------------------------------------------------------------------------- replay
def replay(
    w: Workload,
    capacity: int,
    eviction: str,
    run,
    *,
    lfu_half_life: float = DEFAULT_LFU_HALF_LIFE,
    preload_full: bool = True,
    lookahead: bool = False,
    on_steps: Callable[[int], None] | None = None,
    events: list | None = None,
    order=None,
):
    """The engine's counters (`CacheCounters`) after replaying `w` through a cache of `capacity` slots.

    `order`: an eviction order object to rank the residents with (`engine.experts.eviction.HeapOrder`'s
    interface) instead of the one `eviction` names; `eviction` is then only its label.

    `preload_full`: a cache with a slot for every expert starts full, as the server's `load_all` does
    (`ModelRunner` alone starts cold). `lookahead`: chunk oversized layer-steps as on CUDA. `events`: a list
    to append, per step and layer, (step, layer, the tap's target or -1, copies the tap issued, demand
    copies) for `predictors.sim_timeline`."""
    nl = w.num_layers
    future = None
    if eviction == "belady" and order is None:
        future = (
            (s * nl + layer, [(layer, e) for e in w.step_routed(s, layer)])
            for s in range(w.steps)
            for layer in range(nl)
        )
    if order is None:
        order = build_order(eviction, future=future, lfu_half_life=lfu_half_life, ticks_per_token=nl)
    scored = eviction == "predicted"
    if scored and w.scores is None:
        raise SimulateError("eviction predicted needs the workload's predictor scores (predictor_scores)")
    cache = SimCache(capacity, nl, order, lookahead=lookahead)
    if preload_full and capacity >= w.total_experts:
        cache.preload([(layer, e) for layer in range(nl) for e in range(w.num_experts)])
    limit = ahead_limit(capacity, w.top_k, run.shift)
    predicts = run.name != "none"
    c = cache.counters
    for s in range(w.steps):
        for layer in range(nl):
            cache.now = s * nl + layer
            if scored:
                order.set_scores(layer, w.step_scores(s, layer))
            tapped, issued = -1, 0
            if predicts:
                target = layer + run.shift
                if target < nl:
                    before = c.prefetch_issued[target]
                    cache.prefetch(target, run.ids(w, s, layer), limit=limit)
                    tapped, issued = target, c.prefetch_issued[target] - before
            missed = c.misses[layer]
            cache.route(layer, w.step_routed(s, layer))
            if events is not None:
                events.append((s, layer, tapped, issued, c.misses[layer] - missed))
        if on_steps is not None and (s % 256 == 255 or s == w.steps - 1):
            on_steps(s % 256 + 1)
    return cache.counters


@dataclass(frozen=True)
class TimeModel:
    step_ms: float = 4.6  # resident decode step (Qwen3-30B-A3B shape, engine, H200)
    bandwidth_gbs: float = 55.0  # pinned host->device (H200, PCIe gen5 x16)
    # the clock's (predictors.sim_timeline): the host's work at each segment boundary of a segmented step,
    # fitted on the DeepSeek-V2-Lite twin on an H200 (bench/twin_timeline.py), and attention's share of a step
    decision_ms: float = 0.277
    attention_share: float = 0.5
    # hybrid misses on the clock (MOE_HYBRID_MISSES): the host's ms for one expert on one row; 0: off
    host_expert_ms: float = 0.0


def summarize(counters, steps: int, expert_bytes: int | None, tm: TimeModel) -> dict:
    """Per-token figures of one replay; bytes and times only when the expert size is known."""
    c = {name: sum(getattr(counters, name)) for name in PER_LAYER}
    hits = c["hits_resident"] + c["hits_prefetched"]
    out = {
        "hit_rate": hits / c["requests"] if c["requests"] else 1.0,  # the engine's: resident + prefetched
        "resident_hit_rate": c["hits_resident"] / c["requests"] if c["requests"] else 1.0,
        "misses_per_token": c["misses"] / steps,
        "prefetches_per_token": c["prefetch_issued"] / steps,
        "wasted_prefetch_share": c["prefetch_wasted"] / c["prefetch_issued"] if c["prefetch_issued"] else 0.0,
        "prediction_recall": c["predicted_routed"] / c["routed_scored"] if c["routed_scored"] else None,
        "counts": c,
    }
    if expert_bytes:
        per_ms = tm.bandwidth_gbs * 1e9 / 1e3  # bytes per millisecond
        demand = c["misses"] * expert_bytes / steps
        prefetch = c["prefetch_issued"] * expert_bytes / steps
        out.update(
            demand_bytes_per_token=demand,
            prefetch_bytes_per_token=prefetch,
            bytes_per_token=demand + prefetch,
            overlap_ms=max(tm.step_ms, (demand + prefetch) / per_ms),
            serial_ms=tm.step_ms + demand / per_ms,
        )
    return out


# ----------------------------------------------------------------------------- sweep and capacity
@dataclass(frozen=True)
class CacheSize:
    slots: int
    asked: str  # "fraction 0.25", "1.5 GB", "bisect"


def cache_sizes(
    w: Workload, fractions: list[float], gigabytes: list[float], expert_bytes: int | None
) -> list[CacheSize]:
    """Slots for each asked budget, as the engine sizes its cache (`slots_for_budget`, at least top-k)."""
    out: dict[int, CacheSize] = {}
    for f in fractions:
        n = slots_for_budget(w.total_experts, expert_bytes or 1, w.top_k, fraction=f)
        out.setdefault(n, CacheSize(n, f"fraction {f:g}"))
    for gb in gigabytes:
        if not expert_bytes:
            raise SimulateError("--cache-gb needs the expert size: pass --expert-mb or --model")
        n = slots_for_budget(w.total_experts, expert_bytes, w.top_k, gigabytes=gb)
        out.setdefault(n, CacheSize(n, f"{gb:g} GB"))
    return sorted(out.values(), key=lambda c: c.slots)


def smallest_cache(
    hit_at: Callable[[int], float], known: dict[int, float], target: float, low: int, high: int
) -> tuple[int, float] | None:
    """The fewest slots in [low, high] whose hit rate reaches `target`, bisecting on slots between the
    simulated sizes that bracket it (`known`: slots -> hit rate, extended by `hit_at`). Assumes the hit
    rate grows with the cache, which holds for LRU and Belady without prefetch and nearly always with it."""
    reached = sorted(n for n, h in known.items() if h >= target)
    if not reached:
        return None
    hi = reached[0]
    below = [n for n, h in known.items() if h < target and n < hi]
    lo = max(below) if below else low - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid not in known:
            known[mid] = hit_at(mid)
        if known[mid] >= target:
            hi = mid
        else:
            lo = mid
    return hi, known[hi]
