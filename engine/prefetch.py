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
waits until the worker has issued everything submitted so far: the cache is only ever touched by
one thread at a time. On the CPU the same steps run inline.

Policies (`MOE_POLICY`):
    none           no prediction; the cache is plain LRU.
    exact          the predictor's top-k (k = the model's experts per token).
    overprovision  the predictor's top-k', k' = MOE_OVERPROVISION (default ceil(1.5 k)).
    top1           the predictor's best expert per token.
    adaptive       per token, the fewest experts whose predicted probability mass reaches
                   MOE_ADAPTIVE_TARGET, at least k and at most MOE_ADAPTIVE_MAX (default 2 k).
    crosslayer     FATE-style baseline: while layer l runs, layer l+1's router on layer l's
                   pre-attention input picks k experts of layer l+1 (no predictor needed).
    oracle         replays the routing recorded from an identical earlier run (MOE_ORACLE_TRACE).
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.errors import EngineError
from engine.expert_cache import ExpertCache
from engine.routing_trace import RoutingReplay

log = logging.getLogger(__name__)

PREDICTOR_POLICIES = ("exact", "overprovision", "top1", "adaptive")
SWITCH_INTERVAL = 1e-4  # seconds; the worker must get the GIL quickly while the main thread launches kernels


# ----------------------------------------------------------------------------- policies
class Policy:
    """Scores [T, E] -> id table (int64): each row's M ranked ids, and with `counted` a last column
    saying how many of them to take (otherwise all M)."""

    name = "?"
    width = 0  # M
    counted = False

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TopK(Policy):
    def __init__(self, name: str, m: int, num_experts: int) -> None:
        self.name = name
        self.width = min(m, num_experts)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.topk(scores, self.width, dim=-1).indices  # [T, M]


class Adaptive(Policy):
    """The fewest experts whose predicted mass reaches `target`, clamped to [k, max].

    The mass is the predictor's per-expert probability normalised over the experts: sigmoid of the
    logits for the BCE-family losses (each output is P(expert is routed)), the clipped outputs
    themselves for the MSE loss (which regresses the router's softmax scores).
    """

    name = "adaptive"
    counted = True

    def __init__(self, k: int, max_experts: int, target: float, num_experts: int, loss: str) -> None:
        self.k = min(k, num_experts)
        self.width = max(self.k, min(max_experts, num_experts))
        self.target = target
        self.mse = loss == "mse"

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.float()  # [T, E]
        p = s.clamp_min(0) if self.mse else torch.sigmoid(s)
        q = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        q, ids = torch.sort(q, dim=-1, descending=True)  # [T, E]
        before = torch.cumsum(q, dim=-1) - q  # mass of the better-ranked experts
        n = (before < self.target).sum(dim=-1, keepdim=True).clamp(self.k, self.width)  # [T, 1]
        return torch.cat([ids[:, : self.width], n], dim=1)  # [T, M+1]


def union_best_first(rows: list[list[int]], counted: bool = False) -> list[int]:
    """The union of the rows' ids (with `counted`, each row's first n, n = its last entry), most chosen
    first, then best rank."""
    if counted:
        rows = [row[: row[-1]] for row in rows]
    if len(rows) == 1:
        return rows[0]
    votes: dict[int, list[int]] = {}  # id -> [times chosen, best rank]
    for row in rows:
        for rank, e in enumerate(row):
            v = votes.get(e)
            if v is None:
                votes[e] = [1, rank]
            else:
                v[0] += 1
                v[1] = min(v[1], rank)
    return sorted(votes, key=lambda e: (-votes[e][0], votes[e][1], e))


def default_overprovision(k: int) -> int:
    return math.ceil(1.5 * k)


# ----------------------------------------------------------------------------- the tap
@dataclass
class _Job:
    target: int  # the MoE layer the prediction is for
    host: torch.Tensor | None  # pinned copy of the id table (CUDA)
    done: torch.cuda.Event | None
    rows: list[list[int]] | None  # already on the host (CPU path)
    t0: float


Scorer = Callable[[int, torch.Tensor], torch.Tensor]  # (moe layer, x[T, d]) -> scores[T, E]


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
    itself and 1 when they are for layer l+1 (`crosslayer`). `replay` replaces the scorer for `oracle`.
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
        cache.before_routing = self.wait if self.threaded else None

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
        self.cache.before_routing = None

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
        decode = self.cache.decode
        if decode is not None and decode.capture is not None:  # a decode step is being captured
            table = None
            if self.replay is None:
                table = self._select(index, output.detach().reshape(-1, output.shape[-1]))  # [T, M(+1)]
            decode.capture.on_prediction(self, target, table)
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

    def issue_captured(self, target: int, host: torch.Tensor | None, rows: int, t0: float) -> None:
        """A captured tap's prediction, replayed: `host` holds the id table of the step's rows (the
        first `rows` are real), or is None for a replayed routing (oracle)."""
        if host is None:
            self._issue(target, None, t0, ids=self.replay.next(target))
        else:
            self._issue(target, host[:rows].tolist(), t0)

    def _select(self, index: int, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
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


# ----------------------------------------------------------------------------- construction
def _router_scorer(layers: list) -> Scorer:
    """Layer l+1's router logits on layer l's pre-attention input (FATE-style cross-layer guess)."""

    def score(index: int, x: torch.Tensor) -> torch.Tensor:
        router = layers[index + 1].router
        w = router.weight  # [E, d]
        b = getattr(router, "bias", None)
        return F.linear(x.to(w.dtype), w, b if isinstance(b, torch.Tensor) else None)  # [T, E]

    return score


def _bank_scorer(bank) -> Scorer:
    def score(index: int, x: torch.Tensor) -> torch.Tensor:
        return bank.forward_layer(index, x)

    return score


def resolve_bundle(policy: str, predictors: str | None, builtin_bundle: Path | None) -> str | None:
    if policy not in PREDICTOR_POLICIES:
        return None
    if predictors is not None:
        return predictors
    if builtin_bundle is not None:
        return str(builtin_bundle)
    raise EngineError(
        f"MOE_POLICY={policy} needs a predictor bundle: set MOE_PREDICTORS to a directory written by "
        "`moe-prefetch train` for this model (or use MOE_POLICY=none, crosslayer or oracle)"
    )


def load_predictors(path: str, model, layers: list, device: torch.device, dtype: torch.dtype):
    """The bundle at `path` as a bank on `device`, after checking it belongs to `model`."""
    from predictors.bundle import load_bundle
    from predictors.fingerprint import model_fingerprint

    try:
        bank, manifest = load_bundle(path, expected_fingerprint=model_fingerprint(model))
    except (FileNotFoundError, ValueError) as err:
        raise EngineError(f"MOE_PREDICTORS: {err}") from None
    if len(bank) != len(layers):
        raise EngineError(
            f"predictor bundle {path} has {len(bank)} layers, the model has {len(layers)} MoE layers"
        )
    return bank.to(device=device, dtype=dtype).eval(), manifest


def build_policy(
    name: str,
    k: int,
    num_experts: int,
    *,
    overprovision: int | None = None,
    adaptive_target: float = 0.9,
    adaptive_max: int | None = None,
    loss: str = "wbce",
) -> Policy:
    if name in ("exact", "crosslayer"):
        return TopK(name, k, num_experts)
    if name == "overprovision":
        return TopK(name, overprovision or default_overprovision(k), num_experts)
    if name == "top1":
        return TopK(name, 1, num_experts)
    if name == "adaptive":
        return Adaptive(k, adaptive_max or 2 * k, adaptive_target, num_experts, loss)
    raise ValueError(f"no prediction policy called {name!r}")


def build_prefetcher(
    om,
    config,
    builtin_bundle: Path | None = None,
    on_latency: Callable[[float], None] | None = None,
    bank=None,
    manifest: dict | None = None,
    threaded: bool | None = None,
    graphs_enabled: bool = True,
) -> Prefetcher | None:
    """The prefetcher `config.policy` asks for on the offloaded model `om` (None for `none`), installed.

    `bank`/`manifest` may be passed directly (tests, benchmarks); otherwise the bundle comes from
    `config.predictors` or the built-in model's shipped bundle.
    """
    name = config.policy
    if name == "none":
        return None
    layers, cache = om.layers, om.cache
    num_experts = om.store.layout.num_experts
    if name == "oracle":
        if not config.oracle_trace:
            raise EngineError(
                "MOE_POLICY=oracle needs MOE_ORACLE_TRACE: a routing file recorded with MOE_RECORD_ROUTING"
            )
        from predictors.fingerprint import model_fingerprint

        replay = RoutingReplay.load(config.oracle_trace, model_fingerprint(om.model), len(layers))
        return Prefetcher(layers, cache, None, replay=replay, on_latency=on_latency, threaded=False).install()
    if name == "crosslayer":
        policy = build_policy(name, om.top_k, num_experts)
        # Layer l+1's pins are held while layer l acquires: leave it room for a full top-k.
        limit = max(0, cache.capacity - om.top_k)
        pf = Prefetcher(
            layers,
            cache,
            policy,
            _router_scorer(layers),
            shift=1,
            limit=limit,
            on_latency=on_latency,
            threaded=threaded,
        )
    else:
        if bank is None:
            path = resolve_bundle(name, config.predictors, builtin_bundle)
            bank, manifest = load_predictors(path, om.model, layers, om.device, om.dtype)
        policy = build_policy(
            name,
            om.top_k,
            num_experts,
            overprovision=config.overprovision,
            adaptive_target=config.adaptive_target,
            adaptive_max=config.adaptive_max,
            loss=(manifest or {}).get("loss", "wbce"),
        )
        pf = Prefetcher(layers, cache, policy, _bank_scorer(bank), on_latency=on_latency, threaded=threaded)
    pf.install()
    graphs = pf.capture_decode_graphs(int(om.model.config.hidden_size), om.dtype) if graphs_enabled else 0
    log.info(
        "prefetch policy %s: up to %d experts per token; %s%s",
        name,
        policy.width,
        "side stream + worker thread" if pf.threaded else "inline",
        f", {graphs} single-token taps as CUDA graphs" if graphs else "",
    )
    return pf
