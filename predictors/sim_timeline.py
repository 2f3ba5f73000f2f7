"""A per-layer clock for the simulator's replays: when each copy starts and ends, and how long a token takes,
for segmented decode steps (the engine's path when misses are many: the host decides at segment boundaries).

`replay(..., events=[])` (predictors.simulate) records, per step and MoE layer, how many copies the layer's
tap issued (and for which layer) and how many demand copies its routing needed. `timeline_ms` then plays
them against two resources, the GPU's compute stream and one host-to-device copy engine (FIFO):

- layer l's tap, when a policy predicts there, ends a graph segment: the host decides (`decision_ms`) and
  queues the predicted copies, which start when the copy engine is free;
- the layer's attention and router (`attention_share` of the layer's resident time) run, then the host
  decides again (`decision_ms`) and queues the layer's demand copies;
- the layer's experts start when the router's decision is made and every copy for this layer (predicted
  by an earlier tap or demanded now) has landed, and take the rest of the layer's resident time;
- with `demand_first`, a tap's copies for a later layer (a lookahead prediction, `oracle+d`) queue right
  after the layer's demand copies instead of before them, so the layer's own misses do not wait behind copies
  that a later layer needs (the engine queues them first, in the tap's order);
- with hybrid misses (`host_ms` > 0, `MOE_HYBRID_MISSES`), the host computes part of the layer's demand
  misses (`engine.experts.hybrid_split.host_share`, the engine's rule) while the rest are copied, and the
  experts start when both are done.

A copy takes expert bytes / bandwidth. Fitted to one measured configuration through `decision_ms`
(`fit_decision_ms`: the host's work at a boundary, launch and Python included, is not a number one can
look up), the model's other predictions can be checked against the engine's measurements, and it says what
issuing copies earlier (`MOE_ORACLE_AHEAD`, lookahead bundles) can buy before a GPU measures it. What it
does not model: streamed steps, batches, copies slower while compute runs, and the predictor's own time.

Imports the standard library and `engine.experts.hybrid_split` (torch-free) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.experts.hybrid_split import host_share

Event = tuple[
    int, int, int, int, int
]  # (step, layer, tap target or -1, copies the tap issued, demand copies)


@dataclass(frozen=True)
class Timeline:
    step_ms: float  # the resident decode step (every expert on the GPU)
    bandwidth_gbs: float  # host->device
    decision_ms: float = 0.0  # host work at each segment boundary
    attention_share: float = 0.5  # of a layer's resident time, before its experts
    host_ms: float = 0.0  # hybrid misses: the host's time for one expert on one row (0: off)
    demand_first: bool = False  # a tap's copies for a later layer queue after this layer's demand copies


class Clock:
    """The timeline played as events arrive (`replay(..., events=Clock(...))`: it only appends), in O(layers)
    memory, so a long trace needs no event list."""

    def __init__(self, num_layers: int, expert_bytes: int, tl: Timeline, top_k: int = 1) -> None:
        """top_k: routed experts per token (hybrid misses keep one of a layer's routed experts on the
        device); a replay's steps are batch 1."""
        self.copy_ms = expert_bytes / (tl.bandwidth_gbs * 1e6)
        self.host_ms, self.top_k = tl.host_ms, top_k
        layer_ms = tl.step_ms / num_layers
        self.attn, self.experts = tl.attention_share * layer_ms, (1.0 - tl.attention_share) * layer_ms
        self.decision = tl.decision_ms
        self.demand_first = tl.demand_first
        self.t = self.copy_free = 0.0
        self.ready = [0.0] * num_layers  # when every copy queued so far for a layer has landed

    def append(self, event: Event) -> None:
        _step, layer, target, issued, demand = event
        later = 0  # copies for a later layer held back until this layer's demand copies are queued
        if target >= 0:  # the tap predicted: a segment boundary, then its copies queue
            self.t += self.decision
            if issued and self.demand_first and target != layer:
                later = issued
            elif issued:
                self.copy_free = max(self.copy_free, self.t) + issued * self.copy_ms
                self.ready[target] = max(self.ready[target], self.copy_free)
        self.t += self.attn + self.decision  # attention, router, the host's decision on its routing
        on_host = 0
        if demand and self.host_ms > 0:
            on_host = len(host_share([(i, 1) for i in range(demand)], self.copy_ms, self.host_ms, self.top_k))
            self.ready[layer] = max(self.ready[layer], self.t + on_host * self.host_ms)
        if demand - on_host:
            self.copy_free = max(self.copy_free, self.t) + (demand - on_host) * self.copy_ms
            self.ready[layer] = max(self.ready[layer], self.copy_free)
        if later:  # queued at the routing decision, behind the demand copies
            self.copy_free = max(self.copy_free, self.t) + later * self.copy_ms
            self.ready[target] = max(self.ready[target], self.copy_free)
        self.t = max(self.t, self.ready[layer]) + self.experts

    def ms(self, steps: int) -> float:
        """Mean ms per step so far."""
        return self.t / steps if steps > 0 else 0.0


def timeline_ms(
    events: Sequence[Event], steps: int, num_layers: int, expert_bytes: int, tl: Timeline, top_k: int = 1
) -> float:
    """Mean ms per step of the recorded events on the timeline (events in replay order)."""
    clock = Clock(num_layers, expert_bytes, tl, top_k)
    for e in events:
        clock.append(e)
    return clock.ms(steps)


def fit_decision_ms(
    events: Sequence[Event],
    steps: int,
    num_layers: int,
    expert_bytes: int,
    tl: Timeline,
    measured_ms: float,
    hi: float = 5.0,
) -> float | None:
    """The `decision_ms` at which `timeline_ms` equals `measured_ms` (bisection; the time grows with it),
    or None when no value in [0, hi] ms reaches it (the measurement is faster than the model allows)."""

    def at(d: float) -> float:
        return timeline_ms(
            events, steps, num_layers, expert_bytes, Timeline(**{**tl.__dict__, "decision_ms": d})
        )

    if at(0.0) > measured_ms or at(hi) < measured_ms:
        return None
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid) < measured_ms else (lo, mid)
    return (lo + hi) / 2
