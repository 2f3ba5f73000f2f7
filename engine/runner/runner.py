"""Runs the model: a sequence's prefill into one KV row, and batched decode steps over rows 0..n-1.

Knows nothing about requests, text or queues: it turns token ids into next-token logits. The KV cache is
static (`engine.runner.kv_cache`), so a decode step of a given shape always looks the same; on CUDA it is
captured once as CUDA graphs and replayed (`engine.runner.graphs`), and on the CPU, or where capture is off or
failed, the same forward runs eagerly. Prefill always runs eagerly (its length varies), with the experts
computed one by one so their copies overlap (`engine.model.offload`). On CUDA with Triton, a decode step's
attention runs as one kernel per layer (`engine.model.decode_attention`: the runner switches its own model to
it) and its KV write as another (`engine.runner.kv_cache`).

Where the expert store is mapped into the GPU's address space and every MoE layer runs the fused SiLU expert
kernels, decode steps are streamed (`host_reads`): one graph per step at any cache size, the experts with no
slot read from host memory by the kernels, the cache filled behind the steps (`engine.runner.graphs`).
Otherwise a step whose experts may miss is captured in segments, the host making each layer's experts resident
before they compute. Where both are possible the runner picks per step from the expert bytes recent steps
missed, against `stream_miss_limit` (`engine.runner.step_choice`).

Rows are the caller's business: a sequence keeps its row while it decodes, the rows that decode together are
0..n-1, and `move_row` fills the hole a finished sequence leaves.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from engine.api.config import EngineConfig
from engine.experts.host_experts import HostExperts
from engine.kernels.grouped_experts import GroupedExperts
from engine.kernels.triton_guard import triton_available
from engine.model.loader import OffloadedModel
from engine.model.offload import DecodeMode, decoding
from engine.model.patch_rope import fused_rope_active
from engine.model.patches import install as install_patches
from engine.runner.capture import GraphCapture
from engine.runner.deferred import DeferredSteps
from engine.runner.graphs import GraphReplayer, StepGraph, hybrid_buffers
from engine.runner.host_buffers import HostArena
from engine.runner.host_clock import HostClock
from engine.runner.kv_cache import MaskBuilder, StaticKV
from engine.runner.step_choice import MissedBytes, bucket, can_stream, pads, row_sources

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 4096  # positions per KV row when neither the caller nor the model says fewer
MIN_KV_BUCKET = 64
STREAM_INFLIGHT_BYTES = 512 * 2**20  # streamed steps: expert copies in flight at once (~10 ms of PCIe)
_DEFAULTS = EngineConfig()  # the one place of each setting's default (engine.api.config)


class ModelRunner:
    def __init__(
        self,
        om: OffloadedModel,
        rows: int = 1,
        max_len: int | None = None,
        graphs: bool | None = None,
        attention_kernels: bool | None = None,
        kernels: bool = _DEFAULTS.fused_kernels,
        host_reads: bool = _DEFAULTS.host_reads,
        stream_miss_mb: float | None = _DEFAULTS.stream_miss_mb,
        hybrid: HostExperts | None = None,
        lookahead_after_demand: bool = _DEFAULTS.lookahead_after_demand,
        predictor_overlap: bool = _DEFAULTS.predictor_overlap,
    ) -> None:
        """graphs: capture decode steps as CUDA graphs (None: on CUDA). kernels: False keeps every Triton
        kernel out (experts, norms, RoPE, routers, attention), torch ops only. attention_kernels: the decode
        step's KV write and attention as Triton kernels where they can run (None: on CUDA with Triton when
        `kernels`; True also on CPU under Triton's interpreter, for tests; False: never). The attention kernel
        needs the model on sdpa attention; it then switches the model to it. host_reads: stream decode steps
        where the store and the experts allow it; stream_miss_mb: the missed MB per step above which they are
        segmented instead (None or 0: always streamed; see the module's docstring); hybrid: the host computes
        part of each decode layer's misses in eager and segmented steps (`engine.experts.host_experts`;
        streamed steps read their misses from host memory instead); lookahead_after_demand: segmented steps
        queue the copies a tap predicted for later layers behind the routed layer's demand copies
        (`engine.runner.graphs.GraphReplayer`); predictor_overlap: streamed steps run each prefetch tap's
        predictor on a parallel branch of the step's graph (`engine.runner.capture.GraphCapture`)."""
        self.om = om
        self.model = om.model
        self.device = om.device
        cfg = om.model.config
        model_len = int(getattr(cfg, "max_position_embeddings", DEFAULT_MAX_LEN) or DEFAULT_MAX_LEN)
        self.max_len = min(max_len or DEFAULT_MAX_LEN, model_len)
        self.rows = rows
        self.kernels = kernels
        self.use_triton = kernels and triton_available(self.device)
        attn = self.use_triton if attention_kernels is None else attention_kernels
        self.kv = StaticKV(rows, self.max_len, self.device, fused_write=attn)
        self.masks = MaskBuilder(cfg, om.dtype, self.device)
        if getattr(cfg, "output_router_logits", False):
            cfg.output_router_logits = False  # the auxiliary loss is for training; serving never needs it
        windows = [self.masks.layer_window(i) for i in range(cfg.num_hidden_layers)] if attn else None
        patches = install_patches(om.model, self.kv, windows, fused=self.use_triton)  # engine.model.patches
        self.attention = patches.attention  # passed with every forward (None: the model's own attention)
        self._forward_kwargs = patches.forward_kwargs
        self.fused_rope = patches.fused_rope  # RoPE as one kernel inside this runner's forwards
        self.fused_routers = patches.fused_routers  # routers whose softmax/top-k run as one kernel
        cuda = self.device.type == "cuda"
        self.graphs_enabled = cuda if graphs is None else (graphs and cuda)
        self.host_reads = host_reads
        self.hybrid = hybrid
        self.lookahead_after_demand = lookahead_after_demand
        self.predictor_overlap = predictor_overlap
        self._streams: bool | None = None  # whether steps can be streamed (decided on first use)
        # bytes per step; None: always streamed
        self.stream_miss_limit = int(stream_miss_mb * 2**20) if stream_miss_mb else None
        self._choice = MissedBytes(self.stream_miss_limit)
        self.graph_failure: str | None = None
        self.reset_steps()
        self._graphs: dict[tuple[int, int, bool], StepGraph] = {}  # (rows, KV positions, streamed)
        self._graph_cache = None  # the expert cache the graphs read (slot pool, slot table)
        self._pool = None
        self._arena: HostArena | None = None  # segmented steps' results (`engine.runner.host_buffers`)
        self._stream = torch.cuda.Stream(device=self.device) if cuda else None
        self._staging = torch.zeros((3, rows), dtype=torch.long, pin_memory=cuda)  # ids, positions, sources
        self._staged = torch.cuda.Event() if cuda else None  # recorded after each copy out of `_staging`
        self._deferred = DeferredSteps(cuda)  # whole-step graphs' logs, read one step late
        self._grouped: GroupedExperts | None = None
        self.host_clock = HostClock()  # segmented steps' host time by phase (`engine.runner.host_clock`)

    # ---------------------------------------------------------------- set-up
    @torch.inference_mode()
    def allocate(self) -> int:
        """Allocate the KV cache now (a one-token prefill into row 0); returns its bytes."""
        if not self.kv.allocated:
            self.prefill(0, [0])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return self.kv.nbytes

    def invalidate(self) -> None:
        """Forget captured graphs (after the cache or the prefetch policy changed) and try capturing again.

        The next captures get a fresh memory pool: a pool whose graphs were all destroyed is not reused
        (torch 2.11's pinned-memory allocator asserts on it)."""
        self._settle()
        self._graphs.clear()
        self._pool = None
        self._grouped = None
        self._graph_cache = None
        self.graph_failure = None
        self._streams = None
        self._choice.restart(self.stream_miss_limit)

    def grouped(self) -> GroupedExperts:
        cache = self.om.cache
        if self._grouped is None or self._grouped.weights is not cache.weights:
            self._grouped = GroupedExperts(cache.weights, self.use_triton)
        return self._grouped

    @property
    def streams(self) -> bool:
        """Whether decode steps are streamed: captured whole at any cache size, misses read from host."""
        if self._streams is None:
            self._streams = self._can_stream()
        return self._streams

    def _can_stream(self) -> bool:
        if not (self.host_reads and self.graphs_enabled and self.use_triton):
            return False
        return can_stream(self.om, self.grouped)

    # ---------------------------------------------------------------- forwards
    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask) -> torch.Tensor:
        # ids, pos: [B, t] -> next-token logits [B, V]. Every prefill, eager decode step and graph capture
        # runs here, so the fused RoPE is on exactly for the runner's own forwards (replays need nothing)
        with fused_rope_active() if self.fused_rope else contextlib.nullcontext():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=self.kv,
                use_cache=True,
                logits_to_keep=1,
                **self._forward_kwargs,
            )
        return out.logits[:, -1]

    @torch.inference_mode()
    def prefill(self, row: int, token_ids: list[int], start: int = 0) -> torch.Tensor:
        """Feed a sequence's tokens at positions start.. into KV row `row`; next-token logits [V]."""
        self._settle()
        t = len(token_ids)
        self.kv.set_prefill(row, start, t)
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)  # [1, t]
        pos = torch.arange(start, start + t, device=self.device)[None]  # [1, t]
        out = self._forward(ids, pos, self.masks.build(pos, start + t))[0]
        self._choice.look(self.om.cache)  # a prefill's loads say nothing about decode steps
        return out

    def _decode_forward(self, ids: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        # ids: [B, 1]; pos: [B] -> [B, V]
        self.kv.set_decode(ids.shape[0], kv_len, pos)
        q = pos[:, None]  # [B, 1]
        return self._forward(ids, q, self.masks.build(q, kv_len))

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One new token for each of rows 0..n-1 (row i: `tokens[i]` at `positions[i]`); logits [n, V].

        The result may be a view of a graph's static output: read it before the next step.
        """
        n = len(tokens)
        if not 1 <= n <= self.rows:
            raise ValueError(f"decode of {n} rows; the runner has {self.rows}")
        need = max(positions) + 1
        if need > self.max_len:
            raise ValueError(f"position {need - 1} is past the KV cache's {self.max_len} positions")
        batch = bucket(n, 1, self.rows)
        if self._graphs_usable(batch):
            return self._decode_graph(tokens, positions, batch, bucket(need, MIN_KV_BUCKET, self.max_len))
        self._settle()
        self.steps["eager"] += 1
        return self._decode_eager(tokens, positions, n, need)[:n]

    def _decode_eager(self, tokens: list[int], positions: list[int], batch: int, kv_len: int) -> torch.Tensor:
        # padded rows repeat row 0's token and position (finite values, free KV rows) and route as row 0
        n = len(tokens)
        pad = batch - n
        ids = torch.tensor([tokens + tokens[:1] * pad], dtype=torch.long, device=self.device).T  # [B, 1]
        pos = torch.tensor(positions + positions[:1] * pad, dtype=torch.long, device=self.device)  # [B]
        src = torch.tensor(row_sources(n, batch), device=self.device) if pad else None  # [B]
        mode = DecodeMode(
            self.grouped(),
            host_reads=self.graphs_enabled and self.streams,
            row_source=src,
            hybrid=self.hybrid,
        )
        with decoding(mode):
            return self._decode_forward(ids, pos, kv_len)

    # ---------------------------------------------------------------- CUDA graphs
    def _graphs_usable(self, batch: int) -> bool:
        if self.device.type != "cuda" or not self.graphs_enabled or self.graph_failure is not None:
            return False
        cache = self.om.cache
        if cache is not self._graph_cache:
            self.invalidate()
            self._graph_cache = cache
        if self.streams:
            return True  # a streamed step runs at any cache size
        # a captured step cannot split a layer's experts into chunks: they must all fit at once
        return cache.holds_everything or cache.capacity >= batch * self.om.top_k

    def _choose_stream(self, batch: int) -> bool:
        """Streamed or segmented for this step (see the module's docstring)."""
        if not self.streams:
            return False
        return self._choice.stream(self.om.cache, batch * self.om.top_k, self.stream_miss_limit)

    def _decode_graph(self, tokens: list[int], positions: list[int], batch: int, kv_len: int) -> torch.Tensor:
        n = len(tokens)
        stream = self._choose_stream(batch)
        sg = self._graphs.get((batch, kv_len, stream))
        if sg is not None and sg.whole and not sg.stream and not self.om.cache.holds_everything:
            self.invalidate()  # captured when everything was resident; no longer true
            self._graph_cache = self.om.cache
            sg = None
        if sg is None:
            return self._warm_and_capture(tokens, positions, batch, kv_len, stream)
        if not sg.whole:
            self._settle()  # the host decides what to load from here on: every count must be in
        self._staged.synchronize()  # the staging buffer's last copy is done before it is rewritten
        pad = batch - n
        self._staging[0, :batch] = torch.tensor(tokens + tokens[:1] * pad)
        self._staging[1, :batch] = torch.tensor(positions + positions[:1] * pad)
        sg.ids.copy_(self._staging[0, :batch, None], non_blocking=True)
        sg.pos.copy_(self._staging[1, :batch], non_blocking=True)
        if sg.src is not None:
            self._staging[2, :batch] = torch.tensor(row_sources(n, batch))
            sg.src.copy_(self._staging[2, :batch], non_blocking=True)
        self._staged.record()
        if sg.whole:
            # the table as the step must see it; streamed: the copies earlier steps asked for start behind it
            self.om.cache.stream_publish(STREAM_INFLIGHT_BYTES)
            for graph, _ in sg.segments:
                graph.replay()
            self._deferred.launched(sg, n, self.om.cache)
        else:
            replayer = GraphReplayer(self.om.cache, self.hybrid, self.lookahead_after_demand, self.host_clock)
            replayer.replay(sg, n)
        self.steps["graph"] += 1
        self.steps["streamed"] += sg.stream
        self.steps["segmented"] += not sg.whole
        return sg.logits[:n]

    def _warm_and_capture(
        self, tokens: list[int], positions: list[int], batch: int, kv_len: int, stream: bool
    ):
        """Run this step eagerly on the capture stream (its result is returned), then capture its shape."""
        self._settle()
        cur = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(cur)
        with torch.cuda.stream(self._stream):
            out = self._decode_eager(tokens, positions, batch, kv_len)
        cur.wait_stream(self._stream)
        self.steps["eager"] += 1
        try:
            self._capture(batch, kv_len, stream)
        except Exception as err:  # a family whose forward syncs with the host cannot be captured
            self.graph_failure = f"{type(err).__name__}: {err}"
            self._graphs.clear()
            log.warning("decode steps stay eager: capturing one failed (%s)", self.graph_failure)
        return out[: len(tokens)]

    def _capture(self, batch: int, kv_len: int, stream: bool) -> None:
        cache = self.om.cache
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        whole = stream or cache.holds_everything
        sg = StepGraph(
            batch,
            kv_len,
            ids=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            pos=torch.zeros((batch,), dtype=torch.long, device=self.device),
            src=torch.arange(batch, device=self.device) if pads(batch, self.rows) else None,
            whole=whole,
            stream=stream,
        )
        hybrid = None
        if self.hybrid is not None and not whole:  # outside the capture (see `hybrid_buffers`)
            hidden = int(self.om.model.get_input_embeddings().weight.shape[1])
            hybrid = hybrid_buffers(
                len(self.om.layers), batch, self.om.top_k, hidden, self.om.dtype, self.device
            )
        torch.cuda.synchronize(self.device)
        cap = None
        if not whole and self._arena is None:  # before any capture: no registering inside one
            layout = self.om.store.layout
            self._arena = HostArena.sized(len(self.om.layers), self.rows, layout.num_experts, self.om.top_k)
        with torch.cuda.stream(self._stream):
            try:
                views = self.om.store.layer_views if stream else None
                kw = {"host_views": views, "hybrid": hybrid, "branch_predictions": self.predictor_overlap}
                cap = GraphCapture(self._pool, whole, len(self.om.layers), arena=self._arena, **kw)
                with decoding(DecodeMode(self.grouped(), capture=cap, row_source=sg.src)):
                    sg.logits = self._decode_forward(sg.ids, sg.pos, kv_len)
                    cap.close()
            except BaseException:
                if cap is not None:
                    cap.abort()
                raise
        torch.cuda.synchronize(self.device)
        sg.segments, sg.signals, sg.arena = cap.segments, cap.signals, cap.arena
        sg.logs = cap.logs
        sg.predictors = cap.predictors
        sg.pin_buffers()
        sg.events = [torch.cuda.Event() for _ in sg.segments]
        self._graphs[(batch, kv_len, stream)] = sg
        self.steps["captures"] += 1
        shape = "one graph" if whole else f"{len(sg.segments)} graph segments"
        shape = "one streamed graph" if stream else shape
        log.info("captured decode step: %d rows, %d KV positions, %s", batch, kv_len, shape)

    def _settle(self) -> None:
        """Account the launched whole-step graphs' routing, waiting for them to have run."""
        self._deferred.settle(self.om.cache)

    def reset_steps(self) -> None:
        """Zero the step counts (`steps`: graph steps, of which streamed and segmented; eager; captures)."""
        self.steps = {"graph": 0, "eager": 0, "captures": 0, "streamed": 0, "segmented": 0}

    def step_kinds(self) -> dict[str, int]:
        """Decode steps run so far by kind (the `moe_decode_steps_total` metric)."""
        s = self.steps
        return {
            "streamed": s["streamed"],
            "segmented": s["segmented"],
            "whole": s["graph"] - s["streamed"] - s["segmented"],
            "eager": s["eager"],
        }

    # ---------------------------------------------------------------- rows and bookkeeping
    @torch.inference_mode()
    def move_row(self, src: int, dst: int, length: int) -> None:
        self.kv.move_row(src, dst, length)

    def after_step(self) -> list[float]:
        """Settle deferred accounting; read back stall timings that finished (CUDA), in seconds."""
        self._settle()
        return self.om.cache.flush_stalls() if self.om.cache.cuda else []

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int] | None = None) -> list[int]:
        """Greedy decoding of one prompt in row 0 (tests and benchmarks)."""
        logits = self.prefill(0, prompt_ids)
        pos = len(prompt_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            out.append(tok)
            if eos and tok in eos:
                break
            logits = self.decode([tok], [pos])[0]
            pos += 1
        return out
