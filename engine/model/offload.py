"""Routed experts computed straight from the cache's slot pool.

`install_offload(model, cache, layers)` registers the `moe_offload` implementation in transformers'
`ExpertsInterface` and switches the model to it, so the model's own forward and router run
unchanged and only the experts' inner loop reads weights from cache slots. The math mirrors
transformers' eager experts loop (same ops, experts in ascending id order, `index_add_` per
expert), generic over the flags every v5 `Experts` module carries: gate or not, bias or not,
transposed or not, a custom `_apply_gate`, an optional post-expert norm.

Prefill (many tokens): experts run one after another in ascending id order; on CUDA each waits only
for its own copy, so later experts are still arriving while earlier ones compute. When a layer needs
more distinct experts than the cache can hold at once (long prefill with a small cache), they are
processed in chunks, the next chunk's copies starting before the current chunk computes.

Decode (a few tokens; the runner runs the forward inside `decoding(DecodeMode(...))`): the routed
experts are computed together from their slots by `GroupedExperts` (no per-expert host work). Run
eagerly, the host reads the routed ids once (the layer's one sync) so the cache can make them resident;
while a decode step is being captured as a CUDA graph, nothing runs on the host: the mode's `capture` (a
`StepCapture`, the runner's) records the routing (and ends the graph segment there when the host must
decide what to load) and the slots come from the cache's device slot table.

The decode mode is the one per-step context of a forward that transformers calls: it lives in a context
variable set here (`decoding`) and read here and by the prefetch tap (`decode_mode`). This module also
states what a captured step and the prefetch tap say to each other (`StepCapture`, `CapturedTap`), so
the runner, the model patches and the prefetcher meet in these types, not in attributes of the cache.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.experts.cache import ExpertCache
from engine.experts.host_experts import HostExperts, calibrate, redirect
from engine.experts.slots import Acquired
from engine.kernels.grouped_experts import GroupedExperts
from engine.model.model_map import MoELayer, expert_param_names

if TYPE_CHECKING:
    import numpy as np

IMPLEMENTATION = "moe_offload"
log = logging.getLogger(__name__)


@dataclass
class OffloadHandle:
    layer: int  # MoE layer index (cache key)
    cache: ExpertCache


class CapturedTap(Protocol):
    """What replaying a captured decode step needs from a prefetch tap captured in it."""

    def issue_captured(self, target: int, host: np.ndarray | None, rows: int, t0: float) -> None:
        """A segmented step: issue the prefetch for `target` from the id table in `host` (a numpy view of
        pinned memory; its first `rows` rows are real; None: the tap replays recorded routing), `t0` when
        the prediction was made."""
        ...

    def streamed_prediction(self, target: int, rows: list[list[int]] | None) -> list[int]:
        """A streamed step that ran: the tap's prediction for `target` (best first) from the step's logged
        id table rows (None: the tap replays recorded routing); counted as one prediction."""
        ...


class StepCapture(Protocol):
    """The runner's object that is live while a decode step is captured as a CUDA graph."""

    def on_routing(
        self,
        layer: int,
        top_k_index: torch.Tensor,
        mod: nn.Module | None = None,
        hidden: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict:
        """Called inside the capture; returns extra keyword arguments for `GroupedExperts.forward`, and
        under "hybrid" the layer's hybrid-miss buffers (`sub`, `keep`, `out`, `reset()`) to apply."""
        ...

    def on_prediction(
        self,
        tap: CapturedTap,
        target: int,
        select: Callable[[], torch.Tensor] | None,
        reads: torch.Tensor | None = None,
    ) -> None:
        """A prefetch tap inside the capture: `select()` makes its device id table on the current stream,
        where and if the step needs it (None when the ids are known on the host); `reads`: its input."""
        ...


@dataclass
class DecodeMode:
    """How the forward running now decodes (set by the runner with `decoding` for one decode forward)."""

    grouped: GroupedExperts
    capture: StepCapture | None = None  # set while the step is being captured as a CUDA graph
    host_reads: bool = False  # streamed steps: eager runs use the kernels that can read host memory too
    # [B] long on the device, row b -> the row whose routed experts row b computes with: b for the step's
    # real rows, 0 for the padding rows of a step shape larger than its rows (None: no padding possible)
    row_source: torch.Tensor | None = None
    # hybrid misses (MOE_HYBRID_MISSES): the host computes part of a layer's misses while the rest are copied
    hybrid: HostExperts | None = None


_DECODE: contextvars.ContextVar[DecodeMode | None] = contextvars.ContextVar("moe_decode_mode", default=None)


@contextlib.contextmanager
def decoding(mode: DecodeMode) -> Iterator[None]:
    """Run the forwards inside this block as decode steps in `mode` (this thread or task only)."""
    token = _DECODE.set(mode)
    try:
        yield
    finally:
        _DECODE.reset(token)


def decode_mode() -> DecodeMode | None:
    """The decode mode of the forward running now in this thread; None outside a decode step."""
    return _DECODE.get()


def _project(mod: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    # x: [t, in]; w: [out, in] (or [in, out] when transposed) -> [t, out]
    y = x @ w if mod.is_transposed else F.linear(x, w)
    return y + b if b is not None else y


def _expert_mlp(mod: nn.Module, weights: dict[str, torch.Tensor], slot: int, x: torch.Tensor) -> torch.Tensor:
    has_bias = getattr(mod, "has_bias", False)
    if mod.has_gate:
        h = _project(
            mod, x, weights["gate_up_proj"][slot], weights["gate_up_proj_bias"][slot] if has_bias else None
        )
        h = mod._apply_gate(h)  # [t, I]
    else:
        h = _project(mod, x, weights["up_proj"][slot], weights["up_proj_bias"][slot] if has_bias else None)
        h = mod.act_fn(h)
    h = _project(
        mod, h, weights["down_proj"][slot], weights["down_proj_bias"][slot] if has_bias else None
    )  # [t, D]
    if getattr(mod, "has_post_expert_norm", False):
        h = mod.post_expert_norm(h)
    return h


def _group_by_expert(idx: list[list[int]], num_experts: int) -> dict[int, tuple[list[int], list[int]]]:
    """expert -> (top-k positions, token indices), ordered by (position, token) like eager's torch.where."""
    groups: dict[int, tuple[list[int], list[int]]] = {}
    k = len(idx[0]) if idx else 0
    for p in range(k):
        for t, row in enumerate(idx):
            e = row[p]
            if 0 <= e < num_experts:
                g = groups.setdefault(e, ([], []))
                g[0].append(p)
                g[1].append(t)
    return groups


def offloaded_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    # hidden_states: [T, D]; top_k_index, top_k_weights: [T, k]
    handle: OffloadHandle = self._moe_offload
    cache, layer = handle.cache, handle.layer
    decode = decode_mode()
    if decode is not None and decode.row_source is not None:
        # A padding row attends over its own (stale) KV row, so its router picks experts of its own; the host
        # makes only the real rows' experts resident, and a slot-less expert read by a segmented step's kernels
        # is an out-of-bounds read. Padding rows compute with row 0's experts instead (their output is dropped).
        top_k_index = top_k_index.index_select(0, decode.row_source)  # [T, k]
    if decode is not None and decode.capture is not None:  # inside a CUDA graph capture: no host work
        extra = decode.capture.on_routing(layer, top_k_index, self, hidden_states, top_k_weights)
        hy = extra.pop("hybrid", None)  # segmented steps with hybrid misses: the host's share, applied here
        if hy is not None:
            top_k_index = torch.where(hy.sub >= 0, hy.sub.to(top_k_index.dtype), top_k_index)
            top_k_weights = top_k_weights * hy.keep.to(top_k_weights.dtype)
        out = decode.grouped.forward(
            self, hidden_states, cache.slot_dev[layer], top_k_index, top_k_weights, **extra
        )
        if hy is not None:
            out = out + hy.out.to(out.dtype)
            hy.reset()  # inside the graph: the next step starts with no host share
        return out
    groups = _group_by_expert(top_k_index.tolist(), self.num_experts)  # the one host sync of the layer
    experts = sorted(groups)
    cache.before_routing()  # a prefetch still being issued for this layer finishes first
    cache.account_routing(layer, experts)
    if not experts:
        return torch.zeros_like(hidden_states)
    if decode is not None and len(experts) <= cache.room_for(layer):
        host = _host_share(decode, cache, layer, groups)
        if host:
            return _hybrid_decode(
                self, cache, layer, hidden_states, top_k_index, top_k_weights, experts, host, decode
            )
        acq = cache.acquire(layer, experts)
        try:
            cache.sync_slot_table(layer)
            # with host_reads, the same kernels a streamed step runs (nothing misses here: all acquired)
            host = cache.store.layer_views(layer) if decode.host_reads else None
            return decode.grouped.forward(
                self, hidden_states, cache.slot_dev[layer], top_k_index, top_k_weights, host=host
            )
        finally:
            cache.release(acq)
    return _experts_one_by_one(self, cache, layer, hidden_states, top_k_weights, groups, experts)


def host_experts(store, layers: list[MoELayer], hidden: int, device: torch.device) -> HostExperts | None:
    """Hybrid misses for this model (`MOE_HYBRID_MISSES`): the engine's expert math on the store, with the
    copy and host rates measured now on this machine; None (logged) for experts with a post-expert norm,
    whose weights live on the device only."""
    if getattr(layers[0].experts, "has_post_expert_norm", False):
        log.warning(
            "hybrid misses are off: %s experts end in a norm the host does not hold",
            type(layers[0].experts).__name__,
        )
        return None
    rates = calibrate(store, _expert_mlp, layers[0].experts, hidden, device)
    log.info(
        "hybrid misses: an expert copies in %.3f ms, the host computes one row of it in %.3f ms",
        rates.copy_ms,
        rates.host_ms,
    )
    return HostExperts(store, rates, _expert_mlp)


def _host_share(decode: DecodeMode, cache: ExpertCache, layer: int, groups) -> list[int]:
    """The missed experts the host computes in this decode layer-step (none without hybrid misses)."""
    if decode.hybrid is None:
        return []
    return decode.hybrid.share({e: len(g[1]) for e, g in groups.items()}, lambda e: cache.resident(layer, e))


def _hybrid_decode(
    mod: nn.Module,
    cache: ExpertCache,
    layer: int,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    experts: list[int],
    host: list[int],
    decode: DecodeMode,
) -> torch.Tensor:
    """A decode layer-step with hybrid misses: the rows' hidden states go to the host first (before the
    compute stream waits on any copy), the device's experts are acquired (their copies start), the host
    computes its experts meanwhile, and the device computes its own with the host's pairs redirected at
    weight zero, then adds the host's output."""
    t0 = time.perf_counter()
    x_host, w_host = hidden_states.to("cpu"), top_k_weights.to("cpu")
    on_host = set(host)
    device_ids = [e for e in experts if e not in on_host]
    cache.count_host(layer, host)
    acq = cache.acquire(layer, device_ids)
    try:
        cache.sync_slot_table(layer)
        y = decode.hybrid.output(mod, layer, x_host, top_k_index.tolist(), w_host, host)  # [T, D] host
        ids, weights = redirect(top_k_index, top_k_weights, host, device_ids[0])
        views = cache.store.layer_views(layer) if decode.host_reads else None
        out = decode.grouped.forward(mod, hidden_states, cache.slot_dev[layer], ids, weights, host=views)
        out = out + y.to(out.device)
        decode.hybrid.spent.route_s += time.perf_counter() - t0
        return out
    finally:
        cache.release(acq)


def _experts_one_by_one(
    mod: nn.Module,
    cache: ExpertCache,
    layer: int,
    hidden_states: torch.Tensor,
    top_k_weights: torch.Tensor,
    groups: dict[int, tuple[list[int], list[int]]],
    experts: list[int],
) -> torch.Tensor:
    """Each routed expert on its own tokens, in ascending id order, like transformers' eager loop."""
    out = torch.zeros_like(hidden_states)  # [T, D]
    # Token/position indices for every expert, in one host->device copy.
    flat_pos = [p for e in experts for p in groups[e][0]]
    flat_tok = [t for e in experts for t in groups[e][1]]
    pos_tok = torch.tensor([flat_pos, flat_tok], dtype=torch.long)  # [2, S]
    if hidden_states.device.type == "cuda":
        pos_tok = pos_tok.pin_memory().to(hidden_states.device, non_blocking=True)
    starts, s = {}, 0
    for e in experts:
        starts[e] = s
        s += len(groups[e][1])

    def compute(acq: Acquired, each: bool) -> None:
        for i, (e, slot) in enumerate(zip(acq.ids, acq.slots, strict=True)):
            if each:
                cache.wait_one(acq, i)  # this expert's copy only: later ones keep arriving meanwhile
            a, b = starts[e], starts[e] + len(groups[e][1])
            top_k_pos, token_idx = pos_tok[0, a:b], pos_tok[1, a:b]
            y = _expert_mlp(mod, cache.weights, slot, hidden_states[token_idx])  # [t, D]
            y = y * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        if each:
            cache.finish_waits(acq)

    room = cache.room_for(layer)
    if len(experts) <= room:
        acq = cache.acquire(layer, experts, wait=False)
        try:
            compute(acq, each=True)
        finally:
            cache.release(acq)
        return out

    # More experts than fit: chunks; on CUDA, start the next chunk's copies before computing this one.
    cache.unpin_prediction(layer)
    room = max(1, cache.capacity - cache.pinned_slots())
    lookahead = cache.cuda and room >= 2
    size = room // 2 if lookahead else room
    chunks = [experts[i : i + size] for i in range(0, len(experts), size)]
    cur = cache.acquire(layer, chunks[0], wait=False)
    for i in range(len(chunks)):
        nxt = cache.acquire(layer, chunks[i + 1], wait=False) if lookahead and i + 1 < len(chunks) else None
        try:
            compute(cur, each=True)
        finally:
            cache.release(cur)
        if i + 1 < len(chunks):
            cur = nxt if nxt is not None else cache.acquire(layer, chunks[i + 1], wait=False)
    return out


def register_implementation() -> None:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPLEMENTATION, offloaded_experts_forward)


def strip_expert_weights(experts: nn.Module) -> None:
    """Replace the module's 3-D expert weights by empty meta tensors so nothing holds them twice."""
    for name in expert_param_names(experts):
        p = getattr(experts, name)
        setattr(
            experts,
            name,
            nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False),
        )


def install_offload(model: nn.Module, cache: ExpertCache, layers: list[MoELayer]) -> None:
    """Point every MoE layer's experts at the cache and switch the model to `moe_offload`."""
    register_implementation()
    for layer in layers:
        layer.experts._moe_offload = OffloadHandle(layer=layer.index, cache=cache)
    model.set_experts_implementation(IMPLEMENTATION)
