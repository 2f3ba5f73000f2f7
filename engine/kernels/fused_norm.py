"""RMSNorm in one Triton kernel instead of the eight small ops transformers' modules launch.

A decode step of a 48-layer model runs ~200 RMSNorms (input, post-attention, per-head q/k norms); at
batch 1 each op is launch-bound, so fusing them is a large share of the step. `rms_norm` computes what
transformers' RMSNorm modules compute (statistics in fp32, the normalised value rounded to the input's
dtype, then scaled by the weight); which modules get it, after a check against their own forward, is
`engine.model.patch_norm`'s business. CUDA with Triton only.

Imports torch and Triton (through `engine.kernels.triton_guard`) only.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, N, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        # y = weight * (x * rsqrt(mean(x^2) + eps)).to(x dtype), statistics in fp32, as transformers does
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < N
        x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=0) / N
        normed = (x * tl.rsqrt(var + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + offs, (w * normed).to(y_ptr.dtype.element_ty), mask=m)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., N]; weight: [N] -> [..., N] in the dtype transformers' `weight * x.to(dtype)` gives."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(x2.shape[0],)](
        x2, weight, y, n, x2.stride(0), y.stride(0), eps, BLOCK=block, num_warps=4 if block <= 2048 else 8
    )
    return y.view(x.shape)
