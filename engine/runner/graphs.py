"""Decode steps captured as CUDA graphs and replayed, with the host deciding only what it must.

A decode step (B rows, attention over kv_len positions) is captured once and then replayed for every
later step of that shape. The model's own forward runs during capture; the points where the host has
to act end one graph segment and start the next, one a MoE layer:

- `route`: a MoE layer's router has picked experts. The segment ends there, its last node copying the
  routed ids to page-locked host memory; at replay the host reads them (the layer's one sync), the cache
  makes those experts resident (demand copies on its copy stream, the compute stream waiting on their
  events), the layer's slot-table row goes to the device, and the next segment computes the experts from
  their slots, then runs on through the next layer's prefetch tap and attention to its router.
- a prediction (with a prefetch policy): a layer's pre-attention tap has scored experts inside the
  segment. The segment copies the id table to page-locked host memory right after the tap and records an
  external event there (`Prediction`); at replay the host waits for that event while the segment goes on
  with the layer's attention, and issues the prefetch copies, which run on the copy stream while that
  attention computes. With `after_demand` (`MOE_LOOKAHEAD_AFTER_DEMAND`) the copies a tap predicted for a
  later layer are issued only once the routed layer's own experts are acquired, so its demand copies go
  first on the copy stream (`split_predictions`).

Those small copies are nodes of the graphs, into buffers carved before the capture from registered
memory outside torch's pinned allocator (`engine.runner.host_buffers`): no launch of their own, and no
segment ends at a tap. (Until stop 40 each was a copy launched after its segment, and each tap ended a
segment: two launches and two copies a layer where there is now one launch.)

When the cache holds every expert (it never misses), nothing needs the host: the whole step is one
graph, the slots come from the device slot table, and the routed ids go to a device log that is read
after the step for the cache counters.

Streamed steps (the default where the expert store is mapped into the GPU's address space and every
MoE layer runs the fused SiLU kernels) are whole-step graphs at any cache size: a routed expert with no
slot in the device table is read from host memory by the expert kernels themselves, over PCIe. The
step logs its routed ids, the slot each pair was read from and each prefetch tap's prediction; the host
reads the logs one step late (while the next step runs), counts hits and misses, scores the predictions
and queues the missed and predicted experts, which `ExpertCache.stream_publish` copies in before a
later step (see `engine.experts.streamed` for why no step ever reads a slot being written). So prefetch
works behind the steps: an expert missed or predicted in step t is copied while step t+2 runs and read
from its slot from step t+3 on.

How a step is captured, and where a prefetch tap's predictor runs in it: `engine.runner.capture`.

A shape is captured on its first use, right after an eager run of the same shape on the capture
stream (which gives that step's result and warms every kernel, Triton autotuning included). Every
capture shares one memory pool; segments replay in capture order and one step's outputs are
consumed before another shape's graphs run, which is what sharing a pool requires. If a family's
forward cannot be captured (a host sync inside it), the runner logs why and stays eager.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.experts.cache import ExpertCache
from engine.experts.host_experts import HostExperts, host_pairs
from engine.experts.slots import Acquired
from engine.model.offload import CapturedTap
from engine.runner.host_buffers import HostArena
from engine.runner.host_clock import HostClock

log = logging.getLogger(__name__)


def hybrid_buffers(
    layers: int, batch: int, top_k: int, hidden: int, dtype: torch.dtype, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Each MoE layer's `HybridSlot` device buffers (`sub` [B, k] long, `keep` [B, k] float32, `out`
    [B, D] `dtype`), made before the capture begins. A buffer made inside a capture may get the memory of
    a tensor that the same segment used and freed earlier, which every replay of that segment then
    overwrites; these must keep what the host wrote (or their reset) from one segment to the next."""
    return [
        {
            "sub": torch.empty((batch, top_k), dtype=torch.long, device=device),
            "keep": torch.empty((batch, top_k), dtype=torch.float32, device=device),
            "out": torch.empty((batch, hidden), dtype=dtype, device=device),
        }
        for _ in range(layers)
    ]


@dataclass
class HybridSlot:
    """A segmented step's hybrid-miss buffers for one MoE layer (`engine.experts.host_experts`): the
    experts' input and routing weights the host reads after the route segment, and what the host writes
    before the experts' segment (`sub`: a pair's redirected expert, -1 none; `keep`: its weight factor;
    `out`: the host's output), which that segment applies and then resets. `sub`, `keep` and `out` come
    from `hybrid_buffers`, never from the capture's pool."""

    mod: object  # the layer's experts module (the host's expert math reads its flags)
    x: torch.Tensor  # [B, D] the experts' input (static, the graph's)
    w: torch.Tensor  # [B, k] routing weights (static)
    sub: torch.Tensor  # [B, k] long
    keep: torch.Tensor  # [B, k] the weights' dtype
    out: torch.Tensor  # [B, D] the hidden states' dtype
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # pinned copies of all five, after capture

    def reset(self) -> None:
        self.sub.fill_(-1)
        self.keep.fill_(1)
        self.out.zero_()

    def pin(self) -> None:
        self.host = {
            n: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            for n, t in (
                ("x", self.x),
                ("w", self.w),
                ("sub", self.sub),
                ("keep", self.keep),
                ("out", self.out),
            )
        }


@dataclass
class Prediction:
    """A prefetch tap's prediction signalled inside a segment: the segment copies the tap's id table to
    page-locked `host` and records `done` (an external event) right after the tap, so the host reads it
    while the rest of the segment (the layer's attention and router) runs. An oracle's (`host` None) has
    its ids on the host already, and its `done` is waited for all the same: by the tap the segment has run
    the previous layer's experts, so the slot-table row uploads queued before it have been read. A copy
    the host issues may evict an expert and rewrite its row in the pinned mirror, and an upload not yet
    run would then show that expert gone to the experts reading it (on the H200 an oracle issuing
    without the wait read slot -1: an illegal address)."""

    layer: int  # the MoE layer the prediction is for
    issuer: CapturedTap  # the prefetch tap that turns it into copies
    dev: torch.Tensor | None = None  # the id table on the device (static, the graph's)
    host: torch.Tensor | None = None  # its page-locked copy, written by each replay
    rows: np.ndarray | None = None  # `host` as a numpy view: its reads cost a fraction of torch's
    done: torch.cuda.Event | None = None  # recorded by the segment right after the tap (and `host`'s copy)


@dataclass
class Action:
    """A segment's end: MoE layer `layer`'s router has picked experts (`dev`, static [B, k]); the segment
    has copied them to `host` (page-locked) by its end."""

    layer: int  # the MoE layer routed
    dev: torch.Tensor  # the segment's static result (ids)
    host: torch.Tensor  # its page-locked copy, written by each replay
    rows: np.ndarray  # `host` as a numpy view
    hybrid: HybridSlot | None = None  # route actions of a step captured with hybrid misses


@dataclass
class StepGraph:
    batch: int
    kv_len: int
    ids: torch.Tensor  # [B, 1] static input
    pos: torch.Tensor  # [B] static input
    src: torch.Tensor | None = None  # [B] static input: each row's routing source (None: B rows always real)
    segments: list[tuple[torch.cuda.CUDAGraph, Action | None]] = field(default_factory=list)
    signals: list[list[Prediction]] = field(default_factory=list)  # per segment: the predictions in it
    events: list[torch.cuda.Event] = field(default_factory=list)  # one per segment, reused every step
    logits: torch.Tensor | None = None  # [B, V] static output
    whole: bool = False  # one graph for the step (every expert resident, or streamed)
    stream: bool = False  # streamed: missing experts are read from host memory inside the step
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # whole-step graphs' device logs, by name
    logs_host: list[dict[str, torch.Tensor]] = field(default_factory=list)  # two pinned copies, in turn
    predictors: dict[int, CapturedTap] = field(default_factory=dict)  # streamed: target layer -> its tap
    arena: HostArena | None = None  # segmented: the arena its segments write into (alive with the graphs)

    def pin_buffers(self) -> None:
        """Pinned host buffers for the device results the host copies after a replay (made after capture,
        not during): a hybrid layer's input and weights, and the whole-step graphs' logs."""
        for _, action in self.segments:
            if action is not None and action.hybrid is not None:
                action.hybrid.pin()
                action.hybrid.reset()  # made during the capture, never written yet
        # two of each log, so a step's logs are read while the next step's are copied
        self.logs_host = [
            {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for name, t in self.logs.items()}
            for _ in range(2)
        ]

    def copy_logs(self, turn: int) -> dict[str, torch.Tensor]:
        """Queue the copies of this step's logs to host buffer `turn` (on the current stream)."""
        host = self.logs_host[turn]
        for name, t in self.logs.items():
            host[name].copy_(t, non_blocking=True)
        return host


def split_predictions(predictions: list, layer: int, after_demand: bool) -> tuple[list, list]:
    """The pending predictions at MoE layer `layer`'s route, as (issued before its demand copies, issued
    after its experts are acquired): with `after_demand`, those for a later layer (a lookahead tap's) go
    after, so the layer's misses are first on the copy stream; otherwise all go before, in tap order."""
    if not after_demand:
        return predictions, []
    now = [p for p in predictions if p[0].layer == layer]
    return now, [p for p in predictions if p[0].layer != layer]


class GraphReplayer:
    """Runs a captured step: replays its segments and does each segment's host action."""

    def __init__(
        self,
        cache: ExpertCache,
        hybrid: HostExperts | None = None,
        after_demand: bool = False,
        clock: HostClock | None = None,
    ) -> None:
        self.cache = cache
        self.hybrid = hybrid  # hybrid misses: the host computes part of a layer's misses
        self.after_demand = after_demand  # lookahead copies behind the routed layer's demand copies
        self.clock = clock or HostClock()  # where the host's time goes (`engine.runner.host_clock`)

    def replay(self, sg: StepGraph, n: int) -> None:
        cache, lap = self.cache, self.clock.lap
        stream = torch.cuda.current_stream(cache.device)
        held: list[Acquired] = []
        predictions: list[tuple[Prediction, float]] = []  # signalled, not issued yet; when launched
        ready: tuple[Action, list[int]] | None = None  # routed experts already usable on the device
        later: list = []  # predictions for later layers, issued once the routed layer's experts are held
        self.clock.steps += 1
        t = time.perf_counter()
        for (graph, action), ev, signals in zip(sg.segments, sg.events, sg.signals, strict=True):
            graph.replay()
            t = lap("launch", t)
            for acq in held:  # the experts of the last routed layer are in this segment: now they may go
                cache.release(acq)
            held.clear()
            t = lap("release", t)
            if ready is not None:  # their segment is queued: the bookkeeping runs while it computes
                held.append(self._route(*ready))
                ready = None
                t = lap("route", t)
                t = self._issue(later, n, t)  # only now: a copy issued earlier could evict what `ready` reads
            predictions.extend((p, t) for p in signals)  # their tables land while the segment runs
            if action is None:
                continue
            hy = action.hybrid if self.hybrid is not None else None
            if hy is not None:  # the experts' input and weights, in case the host takes some misses
                hy.host["x"].copy_(hy.x, non_blocking=True)
                hy.host["w"].copy_(hy.w, non_blocking=True)
            ev.record(stream)  # after the segment, whose last node copied the routed ids to `action.host`
            t = lap("read_copy", t)
            now, later = split_predictions(predictions, action.layer, self.after_demand)
            t = self._issue(now, n, t)  # while the segment's attention computes: issue the copies
            predictions.clear()  # (off: `now` is this list, issued and emptied already)
            ev.synchronize()  # the routed ids are on the host
            t = lap("route_wait", t)
            experts = sorted(set(action.rows[:n].ravel().tolist()))
            if cache.ready_on_device(action.layer, experts):
                ready = (action, experts)  # launch the next segment first
                t = lap("route_read", t)
                continue
            t = lap("route_read", t)
            if hy is not None and (host := self._host_share(action.layer, action.host[:n])):
                held.append(self._route_hybrid(action, experts, host, n))
            else:
                held.append(self._route(action, experts))
            t = lap("route", t)
            t = self._issue(later, n, t)  # behind the demand copies the acquire queued
        if ready is not None:
            held.append(self._route(*ready))
            t = lap("route", t)
        t = self._issue(later + predictions, n, t)
        for acq in held:
            cache.release(acq)
        lap("release", t)

    def _issue(self, predictions: list, n: int, t: float) -> float:
        """Issue each pending prediction's copies (after its id table is on the host); empties the list.
        Returns the clock's time after it (`t`: its start)."""
        lap = self.clock.lap
        for pred, t0 in predictions:
            pred.done.synchronize()  # the segment is past the tap (it may still be running): see `Prediction`
            t = lap("predict_wait", t)
            pred.issuer.issue_captured(pred.layer, pred.rows, n, t0)
            t = lap("predict_issue", t)
        predictions.clear()
        return t

    def _route(self, action: Action, experts: list[int]) -> Acquired:
        cache = self.cache
        cache.account_routing(action.layer, experts)
        acq = cache.acquire(action.layer, experts)  # demand copies; the compute stream waits on them
        cache.sync_slot_table(action.layer)
        return acq

    def _host_share(self, layer: int, ids: torch.Tensor) -> list[int]:
        rows = Counter(e for row in ids.tolist() for e in set(row))  # expert -> the rows routed to it
        return self.hybrid.share(rows, lambda e: self.cache.resident(layer, e))

    def _route_hybrid(self, action: Action, experts: list[int], host: list[int], n: int) -> Acquired:
        """`_route` with the host computing `host` (missed experts) while the rest are copied: the copies
        start, the host computes, then its output and the redirect of its pairs go to the device ahead of
        the experts' segment."""
        t0 = time.perf_counter()
        cache, hy, layer = self.cache, action.hybrid, action.layer
        on_host = set(host)
        device_ids = [e for e in experts if e not in on_host]
        cache.account_routing(layer, experts)
        cache.count_host(layer, host)
        acq = cache.acquire(layer, device_ids)  # demand copies; the compute stream waits on them
        cache.sync_slot_table(layer)
        ids = action.host  # [B, k] pinned: every row (padding rows route as row 0)
        y = self.hybrid.output(hy.mod, layer, hy.host["x"][:n], ids[:n].tolist(), hy.host["w"][:n], host)
        on = host_pairs(ids, host)
        hy.host["sub"].copy_(torch.where(on, device_ids[0], -1))
        hy.host["keep"].copy_((~on).to(hy.host["keep"].dtype))
        hy.host["out"].zero_()
        hy.host["out"][:n].copy_(y)
        for name in ("sub", "keep", "out"):  # ordered before the experts' segment on this stream
            getattr(hy, name).copy_(hy.host[name], non_blocking=True)
        self.hybrid.spent.route_s += time.perf_counter() - t0
        return acq

    def account_whole_step(self, logs: dict[str, torch.Tensor], n: int) -> None:
        """After a whole-step graph with every expert resident ran: resident hits from its routing log
        (pinned [L, B, k], copied after the replay)."""
        if "route" not in logs:
            return
        routed = logs["route"][:, :n].flatten(1).tolist()
        for layer, ids in enumerate(routed):
            self.cache.count_resident(layer, sorted(set(ids)))

    def account_streamed_step(self, sg: StepGraph, logs: dict[str, torch.Tensor], n: int) -> None:
        """After a streamed step ran: count its hits and misses, score its predictions, and queue the
        missed experts, then the predicted ones, to be copied in before a later step."""
        cache = self.cache
        if "route" not in logs:
            return
        layers, batch, k = logs["route"].shape
        routed = logs["route"][:, :n].reshape(layers, -1).tolist()
        seen = logs["slots"].view(layers, batch, k)[:, :n].reshape(layers, -1).tolist()
        preds = logs["pred"][:, :n].tolist() if "pred" in logs else None
        wanted: list[tuple[int, list[int]]] = []
        for layer in range(layers):
            slot_of: dict[int, int] = {}
            for e, slot in zip(routed[layer], seen[layer], strict=True):
                slot_of.setdefault(e, slot)
            predicted = None
            tap = sg.predictors.get(layer)
            if tap is not None:
                ids = tap.streamed_prediction(layer, preds[layer] if preds is not None else None)
                predicted = set(ids)
                wanted.append((layer, ids))
            misses = cache.stream_account(layer, list(slot_of), list(slot_of.values()), predicted)
            cache.stream_queue(layer, misses)
        for layer, ids in wanted:
            cache.stream_queue(layer, ids, prefetch=True)
