"""The router's softmax, top-k and renormalisation in one Triton kernel.

transformers' top-k routers (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, ...) compute, per token:
logits = linear(x); probs = softmax(logits) in fp32; top-k of probs; optionally divide by their sum;
optionally cast back to the logits' dtype. At decode that is seven or eight tiny kernels per layer
(softmax, a radix top-k and a sort, a sum, a division, casts) after the projection. `softmax_topk` does
all but the projection (which stays on cuBLAS) in one kernel: one program per token, the top k taken
by k arg-max passes, ties to the lowest expert id. Which routers get it, after a check against their
own forward, is `engine.model.patch_router`'s business. CUDA with Triton only.

Imports torch and Triton (through `engine.kernels.triton_guard`) only.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

MAX_EXPERTS = 1024  # one program holds a token's logits in registers

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _softmax_topk_kernel(
        logits_ptr,
        vals_ptr,
        idx_ptr,
        E,
        stride_l,
        K: tl.constexpr,
        KP: tl.constexpr,
        NORM: tl.constexpr,
        BLOCK_E: tl.constexpr,
    ):
        # per token row: p = softmax(logits) (fp32); the k largest p, ties to the lowest id, in
        # descending order; NORM divides them by their sum. KP = k rounded up to a power of two
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK_E)
        ok = offs < E
        x = tl.load(logits_ptr + row * stride_l + offs, mask=ok, other=float("-inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        e = tl.where(ok, tl.exp(x - m), 0.0)
        p = tl.where(ok, e / tl.sum(e, axis=0), -1.0)
        js = tl.arange(0, KP)
        top_v = tl.zeros((KP,), dtype=tl.float32)
        top_i = tl.zeros((KP,), dtype=tl.int32)
        for j in tl.static_range(K):
            v = tl.max(p, axis=0)
            # a NaN row matches no lane: clamp so the id stays an expert (NaN must never index past E)
            i = tl.minimum(tl.min(tl.where(p == v, offs, BLOCK_E), axis=0), E - 1)
            top_v = tl.where(js == j, v, top_v)
            top_i = tl.where(js == j, i, top_i)
            p = tl.where(offs == i, -2.0, p)
        if NORM:
            top_v = top_v / tl.sum(top_v, axis=0)  # the padding lanes hold zeros
        tl.store(vals_ptr + row * K + js, top_v, mask=js < K)
        tl.store(idx_ptr + row * K + js, top_i.to(tl.int64), mask=js < K)


def softmax_topk(logits: torch.Tensor, k: int, norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [T, E] -> (weights [T, k] float32, expert ids [T, k] int64)."""
    t, e = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    vals = torch.empty((t, k), dtype=torch.float32, device=logits.device)
    idx = torch.empty((t, k), dtype=torch.int64, device=logits.device)
    if t:
        _softmax_topk_kernel[(t,)](
            logits, vals, idx, e, logits.stride(0), K=k, KP=triton.next_power_of_2(k), NORM=norm,
            BLOCK_E=triton.next_power_of_2(e), num_warps=1 if e <= 256 else 4,
        )  # fmt: skip
    return vals, idx
