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
- with `predict_ms`, a trained tap's predictor runs in line before the host can read its ids (the caller
  sets it for trained policies only: `none` has no tap, `oracle` replays);
- with hybrid misses (`host_ms` > 0, `MOE_HYBRID_MISSES`), the host computes part of the layer's demand
  misses (`engine.experts.hybrid_split.host_share`, the engine's rule) while the rest are copied, and the
  experts start when both are done.

A copy takes expert bytes / bandwidth. With `coding` (a `Coding`: `MOE_CODED_EXPERTS`), the clock plays the
engine's coded copy path (`engine.experts.copies.Copier`) instead: each copy moves the code (its measured
time), into one of `staging` rows that is reused only after its last code was decoded; the copies a tap or
a routing decision issues are decoded together on a second resource (one launch per `group` codes,
`decode_base_ms` + `decode_per_expert_ms` each code), and a layer's experts wait for the decode of its last
copy; the host spends `host_extra_ms` more per copy than on a plain one before the next segment starts.
A batch is decoded when `batch` codes wait (the engine: every staging row), so `staging` = 2 x `batch`
models double-buffered rows, whose next batch copies while the last one decodes.

Fitted to one measured configuration through `decision_ms`
(`fit_decision_ms`: the host's work at a boundary, launch and Python included, is not a number one can
look up), the model's other predictions can be checked against the engine's measurements, and it says what
issuing copies earlier (`MOE_ORACLE_AHEAD`, lookahead bundles) can buy before a GPU measures it. What it
does not model: streamed steps, batches, copies slower while compute runs, and the host's time per copy
(a per-copy issue cost fitted beside the decision time moves time from the decisions to the copies and
makes the prefetch rows faster, not slower: it cannot be what the clock misses on the Qwen3 twin).

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
class Coding:
    """Coded copies as the engine makes them; the defaults are the H200's (bench/results/coded_experts.json)."""

    copy_share: float = 0.777  # a code's copy time over a plain expert's (0.137 / 0.177 ms)
    staging: int = 8  # staging rows (engine.experts.copies.STAGING)
    batch: int = 8  # codes copied before they are decoded (the engine: every staging row, `staging`)
    group: int = 8  # codes one decode launch takes (engine.kernels.expert_decode.GROUP)
    decode_base_ms: float = 0.059  # a launch's fixed part: 1 code 0.074 ms, 8 codes 0.181 ms
    decode_per_expert_ms: float = 0.0153
    host_extra_ms: float = 0.022  # the host's time per coded copy beyond a plain one's (0.069 - 0.046)

    def decode_ms(self, n: int) -> float:
        """One flush of n codes: ceil(n / group) launches, one after another on the decode stream."""
        launches = -(-n // self.group)
        return launches * self.decode_base_ms + n * self.decode_per_expert_ms


@dataclass(frozen=True)
class Timeline:
    step_ms: float  # the resident decode step (every expert on the GPU)
    bandwidth_gbs: float  # host->device
    decision_ms: float = 0.0  # host work at each segment boundary
    attention_share: float = 0.5  # of a layer's resident time, before its experts
    host_ms: float = 0.0  # hybrid misses: the host's time for one expert on one row (0: off)
    demand_first: bool = False  # a tap's copies for a later layer queue after this layer's demand copies
    coding: Coding | None = None  # coded copies (MOE_CODED_EXPERTS); None: plain ones
    predict_ms: float = 0.0  # a trained tap's predictor, run in line before the host can read its ids


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
        self.predict = tl.predict_ms
        self.demand_first = tl.demand_first
        self.t = self.copy_free = 0.0
        self.ready = [0.0] * num_layers  # when every copy queued so far for a layer has landed
        self.coding = tl.coding
        if tl.coding is not None:
            self.copy_ms *= tl.coding.copy_share
            self.staging_free = [0.0] * tl.coding.staging  # when each staging row's last code was decoded
            self.next_row = 0
            self.pending: list[tuple[int, int]] = []  # (staging row, layer): copied, not yet decoded
            self.decode_free = 0.0

    def _queue(self, n: int, target: int) -> None:
        """n copies for layer `target`, issued by the host at `self.t`."""
        c = self.coding
        if c is None:
            self.copy_free = max(self.copy_free, self.t) + n * self.copy_ms
            self.ready[target] = max(self.ready[target], self.copy_free)
            return
        for _ in range(n):  # the engine's Copier.copy_coded, then its flush at the batch's end
            if len(self.pending) == c.batch:
                self._flush()
            k = self.next_row
            self.next_row = (k + 1) % c.staging
            self.copy_free = max(self.copy_free, self.t, self.staging_free[k]) + self.copy_ms
            self.pending.append((k, target))
        self._flush()
        self.t += n * c.host_extra_ms

    def _flush(self) -> None:
        if not self.pending:
            return
        end = max(self.copy_free, self.decode_free) + self.coding.decode_ms(len(self.pending))
        self.decode_free = end
        for k, target in self.pending:
            self.staging_free[k] = end
            self.ready[target] = max(self.ready[target], end)
        self.pending.clear()

    def append(self, event: Event) -> None:
        _step, layer, target, issued, demand = event
        later = 0  # copies for a later layer held back until this layer's demand copies are queued
        if target >= 0:  # the tap predicted: a segment boundary (after its predictor), then its copies queue
            self.t += self.decision + self.predict
            if issued and self.demand_first and target != layer:
                later = issued
            elif issued:
                self._queue(issued, target)
        self.t += self.attn + self.decision  # attention, router, the host's decision on its routing
        on_host = 0
        if demand and self.host_ms > 0:
            on_host = len(host_share([(i, 1) for i in range(demand)], self.copy_ms, self.host_ms, self.top_k))
            self.ready[layer] = max(self.ready[layer], self.t + on_host * self.host_ms)
        if demand - on_host:
            self._queue(demand - on_host, layer)
        if later:  # queued at the routing decision, behind the demand copies
            self._queue(later, target)
        self.t = max(self.t, self.ready[layer]) + self.experts  # launched once the host has issued the copies

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
