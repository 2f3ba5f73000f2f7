"""The capture of one decode step as CUDA graphs (`GraphCapture`): live while the model's forward runs inside
the capture, it ends a graph segment wherever the host must act (a MoE layer's route) and keeps the step's
device logs; `engine.runner.graphs` replays what it captured.

In segmented steps a segment copies its routed ids to page-locked host memory as its last node, and a
prefetch tap's id table right after the tap, followed by an external event node the host waits for while
the rest of the segment (the layer's attention and router) runs: a prediction costs no segment of its own
(`engine.runner.host_buffers`).

In streamed steps the taps' predictions are only logged, for the host to read after the step; with
`branch_predictions` (`MOE_PREDICTOR_OVERLAP`) each tap's predictor then runs on a parallel branch of the
step's graph (a side stream forked at the tap and joined at the step's end), so it overlaps the layer's
attention and experts instead of delaying them. Whole-step graphs that read no host memory (every expert
resident, no host views) have no use for a prediction and skip the taps' work altogether.

Imports torch, `engine.model.offload` (the tap's protocol), `engine.runner.graphs` (the actions) and
`engine.runner.host_buffers` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from engine.model.offload import CapturedTap
from engine.runner.graphs import Action, HybridSlot, Prediction
from engine.runner.host_buffers import HostArena


class GraphCapture:
    """Live while one decode step is captured; the experts forward and the prefetch tap call into it."""

    def __init__(
        self,
        pool,
        whole: bool,
        layers: int,
        host_views=None,
        hybrid: list[dict] | None = None,
        branch_predictions: bool = False,
        arena: HostArena | None = None,
    ) -> None:
        """whole: the step is one graph; `host_views(layer)` (streamed steps): the layer's experts in
        mapped host memory, name -> [E, *shape], where the kernels read the experts with no slot;
        hybrid (segmented steps; `hybrid_buffers`, one per MoE layer): each layer's experts segment takes
        the host's share of its misses; branch_predictions (streamed steps): the taps' predictors run on a
        side stream, in parallel with the step, joined at `close`; arena (segmented steps): the page-locked
        host memory the segments copy their routed ids and predictions into (`engine.runner.host_buffers`)."""
        self.pool = pool
        self.branch = branch_predictions and whole and host_views is not None
        self._side: torch.cuda.Stream | None = None  # the predictions' branch, once forked
        self.whole = whole
        self.host_views = host_views
        self.hybrid = None if whole else hybrid
        self.segments: list[tuple[torch.cuda.CUDAGraph, Action | None]] = []
        self.signals: list[list[Prediction]] = []  # per segment, the predictions signalled inside it
        self._pending: list[Prediction] = []  # the current segment's
        if not whole and arena is None:
            raise ValueError("a segmented capture needs a host arena for the results its segments copy out")
        self.arena = None if whole else arena  # a whole-step graph copies nothing out
        if self.arena is not None:
            self.arena.rewind()
        self.logs: dict[str, torch.Tensor] = {}  # whole-step graphs: "route" [L, B, k] ids; streamed also
        # "slots" [L, B*k] (the slot each pair was read from, -1: host) and "pred" [L, B, W] predictions
        self.predictors: dict[int, CapturedTap] = {}
        self._layers = layers
        self._cur = torch.cuda.CUDAGraph()
        self._cur.capture_begin(pool=pool, capture_error_mode="thread_local")
        self._open = True

    def split(self, action: Action) -> None:
        self._cur.capture_end()
        self.segments.append((self._cur, action))
        self.signals.append(self._pending)
        self._pending = []
        self._cur = torch.cuda.CUDAGraph()
        self._cur.capture_begin(pool=self.pool, capture_error_mode="thread_local")

    def close(self) -> None:
        self._join()
        self._cur.capture_end()
        self._open = False
        self.segments.append((self._cur, None))
        self.signals.append(self._pending)
        self._pending = []

    def abort(self) -> None:
        if self._open:
            self._open = False
            try:
                self._join()
                self._cur.capture_end()
            except Exception:  # the capture was already invalidated; ending it is all that is left
                pass

    # ---------------------------------------------------------------- called from the model's forward
    def _log(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The per-layer device log `name` ([L, *shape]; made on first use in the graph's pool, so it lives
        as long as the graph; every layer's row is written by every replay)."""
        log_ = self.logs.get(name)
        if log_ is None:
            log_ = self.logs[name] = torch.empty((self._layers, *shape), dtype=dtype, device=device)
        return log_

    def on_routing(
        self,
        layer: int,
        top_k_index: torch.Tensor,
        mod=None,
        hidden: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict:
        # top_k_index, weights: [B, k] on the device; hidden: [B, D] the experts' input
        if self.whole:
            dev = top_k_index.device
            self._log("route", tuple(top_k_index.shape), top_k_index.dtype, dev)[layer].copy_(top_k_index)
            if self.host_views is None:
                return {}
            slots = self._log("slots", (top_k_index.numel(),), torch.int32, dev)
            return {"host": self.host_views(layer), "slot_log": slots[layer]}  # the kernels write the log
        if self.hybrid is not None and hidden is not None and weights is not None:
            buf = self.hybrid[layer]
            if buf["sub"].shape != top_k_index.shape or buf["out"].shape != hidden.shape:
                raise ValueError(
                    f"hybrid buffers of layer {layer} are {tuple(buf['sub'].shape)} / {tuple(buf['out'].shape)}, "
                    f"the step routes {tuple(top_k_index.shape)} / {tuple(hidden.shape)}"
                )
            slot = HybridSlot(mod, hidden, weights, **buf)
            self.split(self._route(layer, top_k_index, slot))
            return {"hybrid": slot}
        self.split(self._route(layer, top_k_index))
        return {}

    def _copy_out(self, dev: torch.Tensor) -> torch.Tensor:
        """Inside the capture: copy `dev` to a page-locked buffer of the arena (a memcpy node)."""
        host = self.arena.take(tuple(dev.shape), dev.dtype)
        host.copy_(dev, non_blocking=True)
        return host

    def _route(self, layer: int, top_k_index: torch.Tensor, hybrid: HybridSlot | None = None) -> Action:
        host = self._copy_out(top_k_index)  # the segment's last node: the host reads it after the segment
        return Action(layer, top_k_index, host, host.numpy(), hybrid=hybrid)

    def on_prediction(
        self,
        tap: CapturedTap,
        target: int,
        select: Callable[[], torch.Tensor] | None,
        reads: torch.Tensor | None = None,
    ) -> None:
        """A prefetch tap: `select()` makes the device id table on the current stream (None when the ids
        are known on the host); `reads` is the tensor it reads, made on the step's stream."""
        if self.whole:
            if self.host_views is None:
                return  # every expert is resident: nothing to predict
            self.predictors[target] = tap  # streamed: logged, filled in behind the steps
            if select is not None:
                with self._branch(reads):
                    table = select()
                    self._log("pred", tuple(table.shape), table.dtype, table.device)[target].copy_(table)
            return
        table = select() if select is not None else None  # None: a replayed routing (oracle), ids on the host
        host = self._copy_out(table) if table is not None else None
        done = torch.cuda.Event(external=True)  # an event node: the host waits for it mid-segment
        done.record()
        self._pending.append(
            Prediction(target, tap, table, host, None if host is None else host.numpy(), done)
        )

    @contextlib.contextmanager
    def _branch(self, reads: torch.Tensor | None) -> Iterator[None]:
        """With `branch`, the work inside runs on the side stream, forked from the step's stream here
        (the graph gets an edge from the step's last kernel so far) and joined by `close`."""
        if not self.branch:
            yield
            return
        main = torch.cuda.current_stream()
        if self._side is None:
            self._side = torch.cuda.Stream(device=main.device)
        self._side.wait_stream(main)
        if reads is not None:  # not reused by the step's later kernels before the branch reads it
            reads.record_stream(self._side)
        with torch.cuda.stream(self._side):
            yield

    def _join(self) -> None:
        if self._side is not None:
            torch.cuda.current_stream().wait_stream(self._side)
            self._side = None
