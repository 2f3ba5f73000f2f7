"""Every way the engine changes what a transformers model runs, and `install`, which applies the runner's.

transformers builds the model; six patches then change parts of what its forward runs. Each checks,
where it can, that it computes what it replaces, and leaves that part alone otherwise.

1. Offloaded experts (`engine.model.offload`). Replaces each MoE layer's experts computation: registers
   "moe_offload" in transformers' `ExpertsInterface` (`register_implementation`) and switches the model
   to it (`install_offload`), which reads expert weights from the expert cache's slots. Installed by
   the loader, not here: `engine.model.loader` calls `install_offload` when it builds an offloaded
   model (`offload`, `build_synthetic`) and again on a new cache (`replace_cache`). Never undone: the
   module's own expert weights are gone (`strip_expert_weights`), so the model only runs offloaded.
2. Decode attention (`engine.model.decode_attention`). Replaces sdpa attention by "moe_decode": one
   Triton kernel for a plain decode step, sdpa for anything else (`use_decode_attention`; registered
   in `AttentionInterface` and `AttentionMaskInterface`). Only for a model on sdpa, and only that
   model (its config). Installed by `install` when the runner's attention kernels are on; active only
   in forwards given the `DecodeAttention` (the runner's, through `Patches.forward_kwargs`). Not
   undone by the engine; `model.set_attn_implementation("sdpa")` would undo it.
3. RMSNorm (`engine.model.patch_norm`). Replaces the forward of every RMSNorm module whose output
   `engine.kernels.fused_norm.rms_norm` reproduces (`fuse_rms_norms`), as an instance attribute.
   Installed by `install` on CUDA with Triton. Undone by deleting the instance's `forward` (nothing
   does: it lives as long as the model).
4. Routers (`engine.model.patch_router`). Replaces the forward of every top-k router whose choices
   `engine.kernels.fused_router.softmax_topk` reproduces (`fuse_routers`), as an instance attribute.
   Installed by `install` on CUDA with Triton, after the norms. Undone like the norms.
5. RoPE (`engine.model.patch_rope`). Replaces the modeling module's `apply_rotary_pos_emb` with a
   wrapper that runs `engine.kernels.fused_rope.fused_rope` only inside `fused_rope_active()` (the
   runner's own forwards) and only for what the install check reproduced (`install_fused_rope`).
   Process-wide (a module attribute), installed by `install` on CUDA with Triton, after the routers.
   Undone by `uninstall_fused_rope()` (the tests do), or for one family at install when its check fails.
6. Rotary frequencies (`engine.model.patch_rope_freqs`). A rotary module whose forward rebuilds its
   frequencies on the host every call (PhiMoE's) answers that call from a device copy made once
   (`cache_rope_freqs`), so its steps can be captured as CUDA graphs. Installed by `install` on every
   device (the values are the same); never undone.

Imports the patch modules of `engine.model` (they import torch, transformers and `engine.kernels`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from engine.model.decode_attention import KWARG as DECODE_ATTENTION_KWARG
from engine.model.decode_attention import DecodeAttention, use_decode_attention
from engine.model.patch_norm import fuse_rms_norms
from engine.model.patch_rope import install_fused_rope
from engine.model.patch_rope_freqs import cache_rope_freqs
from engine.model.patch_router import fuse_routers

log = logging.getLogger(__name__)


@dataclass
class Patches:
    """What `install` did, as the runner records it."""

    attention: DecodeAttention | None = None  # passed with every forward; None: the model's own attention
    forward_kwargs: dict = field(default_factory=dict)  # the runner's extra keyword arguments per forward
    fused_rope: bool = False  # RoPE as one kernel inside the runner's forwards
    fused_routers: int = 0  # routers whose softmax/top-k run as one kernel
    rope_freqs_cached: int = 0  # rotary modules answering their frequencies from a device copy


def install(model: nn.Module, kv, windows: list[int | None] | None, fused: bool) -> Patches:
    """Apply the runner's patches to `model` (patches 2 to 6 above).

    kv: the runner's static KV cache (`engine.runner.kv_cache.StaticKV`); windows: per decoder layer, the
    sliding window the runner's mask applies, or None to keep the model's attention; fused: norms,
    routers and RoPE as Triton kernels where they reproduce the model (CUDA with Triton)."""
    out = Patches()
    out.rope_freqs_cached = cache_rope_freqs(model)
    if windows is not None:
        out.attention = use_decode_attention(model, kv, windows)
    if out.attention is not None:
        out.forward_kwargs = {DECODE_ATTENTION_KWARG: out.attention}
    if fused:
        n = fuse_rms_norms(model)
        out.fused_routers = fuse_routers(model)
        log.debug("%d RMSNorm modules and %d routers run fused", n, out.fused_routers)
        out.fused_rope = install_fused_rope(model)
        log.debug("RoPE %s", "runs as one fused kernel" if out.fused_rope else "stays unfused")
    return out
