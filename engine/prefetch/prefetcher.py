"""The pre-attention tap: a layer's prediction becomes expert copies that overlap its attention.

A forward hook on each MoE layer's `input_layernorm` reads the normalised hidden state x[T, d] (the
predictor's input, before self-attention). A scorer turns it into expert scores [T, E] (the layer's
trained predictor, or for `crosslayer` the next layer's router), the policy turns scores into a
ranked id table on the device, and the union over the T tokens, best first, goes to
`ExpertCache.prefetch`, which starts the copies and pins them until the layer's router has spoken.

On CUDA nothing in the hook makes the host wait. The scorer and the policy run on a side stream
(ordered after the norm by an event), their small result is copied to a pinned host buffer, and a
worker thread waits for that copy, builds the id list and issues the expert copies on the cache's
copy stream, while the main thread goes on launching the layer's attention. Before the layer's
routed experts are looked up, the offloaded experts forward calls `cache.before_routing()`, which
waits on the prefetcher (registered as the cache's `RoutingBarrier`) until the worker has issued
everything submitted so far: the cache is only ever touched by one thread at a time. On the CPU the
same steps run inline.

Inside a captured decode step (`engine.model.offload.decode_mode()` has a capture) the tap only hands
its id table to the capture; the prefetcher is then the step's `CapturedTap`: graph replay calls it
back to issue (segmented steps) or to read (streamed steps) the prediction.

Policies (`MOE_POLICY`) are listed in `engine.api.policies`; `engine.prefetch.policies` turns scores into
ids and `engine.prefetch.build` makes the prefetcher a configuration asks for.
"""

from __future__ import annotations

import functools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.experts.cache import ExpertCache
from engine.model.offload import decode_mode
from engine.prefetch.policies import Policy, union_best_first
from engine.prefetch.routing_trace import RoutingReplay

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 1e-4  # seconds; the worker must get the GIL quickly while the main thread launches kernels


# ----------------------------------------------------------------------------- the tap
@dataclass
class _Job:
    target: int  # the MoE layer the prediction is for
    host: torch.Tensor | None  # pinned copy of the id table (CUDA)
    done: torch.cuda.Event | None
    rows: list[list[int]] | None  # already on the host (CPU path)
    t0: float


Scorer = Callable[[int, torch.Tensor], torch.Tensor]  # (moe layer, x[T, d]) -> scores[T, E]
# (moe layer, x[T, d], M) -> the M best ids [T, M] without scores, or None (then the scorer's scores are ranked)
Ranker = Callable[[int, torch.Tensor, int], "torch.Tensor | None"]


class _DecodeGraph:
    """One tap's work for a single token (x[1, d] -> scores -> id table -> pinned host copy), captured
    once as a CUDA graph on the side stream. Replaying it costs one launch instead of a dozen."""

    def __init__(self, fn, d_model: int, dtype: torch.dtype, device: torch.device, stream, pool) -> None:
        self.x = torch.zeros((1, d_model), dtype=dtype, device=device)  # the static input
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture (lazy cuBLAS/allocator set-up)
                out = fn(self.x)
        stream.synchronize()
        self.host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            self.host.copy_(fn(self.x), non_blocking=True)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """On the current (side) stream: copy x in, replay; the id table lands in `self.host`."""
        self.x.copy_(x)
        self.graph.replay()
        return self.host


class Prefetcher:
    """Hooks the model's pre-attention norms and keeps the cache ahead of the routers.

    `scorer(l, x)` gives the scores used at MoE layer l's tap; `shift` is 0 when they are for layer l
    itself and d when they are for layer l+d (`crosslayer`: 1; a lookahead bundle: its distance; `oracle`:
    MOE_ORACLE_AHEAD), so layers 0..d-1 get no prediction. `replay` replaces the scorer for `oracle`.
    `ranker(l, x, M)`, where given, gives a top-k policy's ids directly (the one-launch predictor kernel,
    `MOE_PREDICTOR_KERNEL`), or None to fall back on ranking the scorer's scores.
    """

    def __init__(
        self,
        layers: list,
        cache: ExpertCache,
        policy: Policy | None,
        scorer: Scorer | None = None,
        *,
        shift: int = 0,
        replay: RoutingReplay | None = None,
        ranker: Ranker | None = None,
        limit: int | None = None,
        on_latency: Callable[[float], None] | None = None,
        threaded: bool | None = None,
    ) -> None:
        if replay is None and (policy is None or scorer is None):
            raise ValueError("a prefetcher needs a policy and a scorer, or a routing replay")
        self.layers = layers
        self.policy = policy
        self.scorer = scorer
        self.shift = shift
        self.replay = replay
        self.ranker = ranker if policy is not None and policy.ranks_top_k else None
        self.limit = limit
        self.on_latency = on_latency
        self.cache = cache
        self.threaded = cache.cuda if threaded is None else (threaded and cache.cuda)
        self.predictions = 0
        self._hooks: list = []
        self._host: dict[int, torch.Tensor] = {}  # pinned buffers, one per tap
        self._graphs: dict[int, _DecodeGraph] = {}  # single-token taps captured as CUDA graphs
        self._stream = torch.cuda.Stream(device=cache.device) if cache.cuda and replay is None else None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._old_switch: float | None = None

    # ---------------------------------------------------------------- lifecycle
    def install(self) -> Prefetcher:
        for lay in self.layers:
            if lay.index + self.shift < len(self.layers):
                self._hooks.append(lay.input_layernorm.register_forward_hook(self._hook_for(lay.index)))
        self.attach(self.cache)
        if self.threaded:
            self._old_switch = sys.getswitchinterval()
            sys.setswitchinterval(min(self._old_switch, SWITCH_INTERVAL))
            self._worker = threading.Thread(target=self._work, name="moe-prefetch", daemon=True)
            self._worker.start()
        return self

    def attach(self, cache: ExpertCache) -> None:
        """Serve `cache` from now on (benchmarks swap caches of other sizes under one model)."""
        self.wait()
        self.cache = cache
        cache.set_routing_barrier(self if self.threaded else None)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(5.0)
            self._worker = None
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
            self._old_switch = None
        self.cache.set_routing_barrier(None)

    def reset(self) -> None:
        """After a failed step: wait for the worker, then forget every outstanding prediction."""
        try:
            self.wait()
        finally:
            self.cache.reset_prefetch()

    # ---------------------------------------------------------------- the hook
    def _hook_for(self, index: int):
        def hook(module, args, output):
            self._tap(index, output)

        return hook

    def _tap(self, index: int, output: torch.Tensor) -> None:
        t0 = time.perf_counter()
        target = index + self.shift
        decode = decode_mode()
        if decode is not None and decode.capture is not None:  # a decode step is being captured
            select = x = None
            if self.replay is None:
                x = output.detach().reshape(-1, output.shape[-1])
                select = functools.partial(self._select, index, x)  # -> [T, M(+1)]
            decode.capture.on_prediction(self, target, select, x)
            return
        if self.replay is not None:
            self._issue(target, None, t0, ids=self.replay.next(target))
            return
        x = output.detach().reshape(-1, output.shape[-1])  # [T, d]
        if not self.threaded:
            self._issue(target, self._select(index, x).tolist(), t0)
            return
        compute = torch.cuda.current_stream(x.device)
        ready = torch.cuda.Event()
        ready.record(compute)
        side = self._stream
        with torch.cuda.stream(side):
            side.wait_event(ready)
            graph = self._graphs.get(index) if x.shape[0] == 1 else None
            if graph is not None:
                host = graph.run(x)  # one graph launch instead of a dozen kernels
            else:
                table = self._select(index, x)  # [T, M(+1)] on the device
                host = self._host_buffer(index, table.shape)
                host.copy_(table, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        x.record_stream(side)  # x was made on the compute stream and read on the side stream
        self._jobs.put(_Job(target, host, done, None, t0))

    def issue_captured(self, target: int, host: np.ndarray | None, rows: int, t0: float) -> None:
        """A captured tap's prediction, replayed: `host` (a numpy view of pinned memory) holds the id table
        of the step's rows (the first `rows` are real), or is None for a replayed routing (oracle)."""
        if host is None:
            self._issue(target, None, t0, ids=self.replay.next(target))
        else:
            self._issue(target, host[:rows].tolist(), t0)

    def streamed_prediction(self, target: int, rows: list[list[int]] | None) -> list[int]:
        """A streamed step's prediction for `target`, best first, from the id table rows it logged (its
        real rows; None for a replayed routing, oracle). Counted; the copies are queued by the caller."""
        if self.replay is not None:  # oracle: the recorded routing of this step
            ids = list(self.replay.next(target))
        else:
            ids = union_best_first(rows, self.policy.counted)
        self.predictions += 1
        return ids

    def _select(self, index: int, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.ranker is not None:
                ids = self.ranker(index, x, self.policy.width)
                if ids is not None:
                    return ids
            return self.policy.select(self.scorer(index, x))

    def capture_decode_graphs(self, d_model: int, dtype: torch.dtype) -> int:
        """Capture each tap's scorer + policy + host copy for one token as a CUDA graph; returns how many."""
        if not self.threaded:
            return 0
        pool = torch.cuda.graph_pool_handle()
        for lay in self.layers:
            if lay.index + self.shift < len(self.layers):
                self._graphs[lay.index] = _DecodeGraph(
                    lambda x, i=lay.index: self._select(i, x),
                    d_model,
                    dtype,
                    self.cache.device,
                    self._stream,
                    pool,
                )
        return len(self._graphs)

    def _host_buffer(self, index: int, shape: torch.Size) -> torch.Tensor:
        buf = self._host.get(index)
        n = shape[0] * shape[1]
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 64 * shape[1]), dtype=torch.int64, pin_memory=True)
            self._host[index] = buf
        return buf[:n].view(shape)

    def _issue(
        self, target: int, rows: list[list[int]] | None, t0: float, ids: list[int] | None = None
    ) -> None:
        if ids is None:
            ids = union_best_first(rows, self.policy.counted) if rows else []
        self.cache.prefetch(target, ids, limit=self.limit)
        self.predictions += 1
        if self.on_latency is not None:
            self.on_latency(time.perf_counter() - t0)

    # ---------------------------------------------------------------- the worker (CUDA)
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job.done.synchronize()  # releases the GIL while the side stream finishes
                    self._issue(job.target, job.host.tolist(), job.t0)
            except BaseException as err:  # surfaced on the main thread by wait()
                self._error = err
            finally:
                self._jobs.task_done()

    def wait(self) -> None:
        """Block until every submitted prediction has been issued (the main thread's barrier)."""
        if self._worker is not None:
            self._jobs.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"prefetch worker failed: {type(err).__name__}: {err}") from err
