"""Decode steps captured as CUDA graphs and replayed, with the host deciding only what it must.

A decode step (B rows, attention over kv_len positions) is captured once and then replayed for every
later step of that shape. The model's own forward runs during capture; the points where the host has
to act end one graph segment and start the next:

- `route`: a MoE layer's router has picked experts. The segment ends there; at replay the routed ids
  are copied to pinned host memory and the host reads them (the layer's one sync), the cache makes those
  experts resident (demand copies on its copy stream, the compute stream waiting on their events),
  the layer's slot-table row goes to the device, and the next segment computes the experts from
  their slots, then runs on to the next layer's router (or prediction tap).
- `predict` (with a prefetch policy): a layer's pre-attention tap has scored experts. The segment ends
  there; at replay the id table is copied to the host, the host launches the next segment (the layer's
  attention and router) first, then waits for the table and issues the prefetch copies, which run on
  the copy stream while that attention computes.

Device-to-host copies happen between replays, not inside graphs (a graph writing pinned memory is
what torch's host allocator handles worst); each costs one small copy launch.

When the cache holds every expert (it never misses), nothing needs the host: the whole step is one
graph, the slots come from the device slot table, and the routed ids go to a device log that is read
after the step for the cache counters.

A shape is captured on its first use, right after an eager run of the same shape on the capture
stream (which gives that step's result and warms every kernel, Triton autotuning included). Every
capture shares one memory pool; segments replay in capture order and one step's outputs are
consumed before another shape's graphs run, which is what sharing a pool requires. If a family's
forward cannot be captured (a host sync inside it), the runner logs why and stays eager.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from engine.expert_cache import Acquired, ExpertCache

log = logging.getLogger(__name__)


@dataclass
class Action:
    kind: str  # "route" or "predict"
    layer: int  # the MoE layer routed, or the one the prediction is for
    dev: torch.Tensor | None  # the segment's static result (ids); None for a host-only prediction (oracle)
    issuer: object | None = None  # the prefetcher that turns a prediction into copies
    host: torch.Tensor | None = None  # pinned, same shape as `dev`, filled after each replay


@dataclass
class StepGraph:
    batch: int
    kv_len: int
    ids: torch.Tensor  # [B, 1] static input
    pos: torch.Tensor  # [B] static input
    segments: list[tuple[torch.cuda.CUDAGraph, Action | None]] = field(default_factory=list)
    events: list[torch.cuda.Event] = field(default_factory=list)  # one per segment, reused every step
    logits: torch.Tensor | None = None  # [B, V] static output
    route_log: torch.Tensor | None = None  # whole-step graphs: [L, B, k] routed ids on the device
    route_log_host: list[torch.Tensor] = field(default_factory=list)  # two pinned copies, used in turn
    whole: bool = False

    def pin_buffers(self) -> None:
        """Pinned host buffers for every device result the host reads (made after capture, not during)."""
        for _, action in self.segments:
            if action is not None and action.dev is not None:
                action.host = torch.empty(action.dev.shape, dtype=action.dev.dtype, pin_memory=True)
        if self.route_log is not None:  # two, so a step's log is read while the next one is copied
            self.route_log_host = [
                torch.empty(self.route_log.shape, dtype=self.route_log.dtype, pin_memory=True)
                for _ in range(2)
            ]


class GraphCapture:
    """Live while one decode step is captured; the experts forward and the prefetch tap call into it."""

    def __init__(self, pool, whole: bool, layers: int) -> None:
        self.pool = pool
        self.whole = whole
        self.segments: list[tuple[torch.cuda.CUDAGraph, Action | None]] = []
        self.route_log: torch.Tensor | None = None  # [L, B, k] on the device (whole-step graphs)
        self._layers = layers
        self._cur = torch.cuda.CUDAGraph()
        self._cur.capture_begin(pool=pool, capture_error_mode="thread_local")
        self._open = True

    def split(self, action: Action) -> None:
        self._cur.capture_end()
        self.segments.append((self._cur, action))
        self._cur = torch.cuda.CUDAGraph()
        self._cur.capture_begin(pool=self.pool, capture_error_mode="thread_local")

    def close(self) -> None:
        self._cur.capture_end()
        self._open = False
        self.segments.append((self._cur, None))

    def abort(self) -> None:
        if self._open:
            self._open = False
            try:
                self._cur.capture_end()
            except Exception:  # the capture was already invalidated; ending it is all that is left
                pass

    # ---------------------------------------------------------------- called from the model's forward
    def on_routing(self, layer: int, top_k_index: torch.Tensor) -> None:
        # top_k_index: [B, k] on the device
        if self.whole:
            if self.route_log is None:
                self.route_log = torch.empty(
                    (self._layers, *top_k_index.shape), dtype=top_k_index.dtype, device=top_k_index.device
                )  # allocated in the graph's pool, lives as long as the graph
            self.route_log[layer].copy_(top_k_index)
            return
        self.split(Action("route", layer, top_k_index))

    def on_prediction(self, issuer, target: int, table: torch.Tensor | None) -> None:
        """A prefetch tap: `table` is the device id table (None when the ids are known on the host)."""
        if self.whole:
            return  # every expert is resident: nothing to prefetch
        self.split(Action("predict", target, table, issuer))


class GraphReplayer:
    """Runs a captured step: replays its segments and does each segment's host action."""

    def __init__(self, cache: ExpertCache) -> None:
        self.cache = cache

    def replay(self, sg: StepGraph, n: int) -> None:
        cache = self.cache
        stream = torch.cuda.current_stream(cache.device)
        held: list[Acquired] = []
        predictions: list[tuple[Action, torch.cuda.Event, float]] = []
        ready: tuple[Action, list[int]] | None = None  # routed experts already usable on the device
        for (graph, action), ev in zip(sg.segments, sg.events, strict=True):
            graph.replay()
            for acq in held:  # the experts of the last routed layer are in this segment: now they may go
                cache.release(acq)
            held.clear()
            if ready is not None:  # their segment is queued: the bookkeeping runs while it computes
                held.append(self._route(*ready))
                ready = None
            if action is None:
                continue
            if action.dev is not None:
                action.host.copy_(action.dev, non_blocking=True)
            ev.record(stream)
            if action.kind == "predict":
                predictions.append((action, ev, time.perf_counter()))
                continue
            for pred, pev, t0 in predictions:  # the attention segment is queued: now issue the copies
                pev.synchronize()
                pred.issuer.issue_captured(pred.layer, pred.host, n, t0)
            predictions.clear()
            ev.synchronize()  # the routed ids are on the host
            experts = sorted(set(action.host[:n].reshape(-1).tolist()))
            if cache.ready_on_device(action.layer, experts):
                ready = (action, experts)  # launch the next segment first
            else:
                held.append(self._route(action, experts))
        if ready is not None:
            held.append(self._route(*ready))
        for acq in held:
            cache.release(acq)

    def _route(self, action: Action, experts: list[int]) -> Acquired:
        cache = self.cache
        cache.account_routing(action.layer, experts)
        acq = cache.acquire(action.layer, experts)  # demand copies; the compute stream waits on them
        cache.sync_slot_table(action.layer)
        return acq

    def account_whole_step(self, route_log_host: torch.Tensor, n: int) -> None:
        """After a whole-step graph ran: resident hits from its routing log (pinned [L, B, k], copied
        after the replay)."""
        routed = route_log_host[:, :n].flatten(1).tolist()
        for layer, ids in enumerate(routed):
            self.cache.count_resident(layer, sorted(set(ids)))
