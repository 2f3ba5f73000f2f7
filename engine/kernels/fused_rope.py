"""Rotary position embedding of q and k in one Triton kernel.

transformers applies RoPE with a module-level `apply_rotary_pos_emb(q, k, cos, sin)` in each modeling
file: `q * cos + rotate_half(q) * sin`, the same for k. That is about a dozen tiny kernels (mul, neg,
cat, add) per decoder layer, launch-bound at decode; one kernel here does q and k together. It rounds
as those ops do (each product rounded to the tensors' dtype, then the sum rounded), so its output is
bit-identical to transformers' in float32, bfloat16 and float16. The partial form (`cos` narrower than
the head: the first `cos.shape[-1]` dims rotated, the rest passed through, as in GLM and Phi-3) is
handled too. `supported` says which arguments the kernel takes; where it replaces transformers'
function, and after which check, is `engine.model.patch_rope`'s business.

Imports torch and Triton (through `engine.kernels.triton_guard`) only.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _round(x, dt: tl.constexpr, BF16: tl.constexpr):
        # fp32 x rounded to dt (round to nearest even, as torch's ops round), returned as fp32. bfloat16 by
        # integer ops, which give the same bits as the GPU's conversion and also in Triton's CPU
        # interpreter, whose float->bfloat16 conversion truncates
        if BF16:
            u = x.to(tl.uint32, bitcast=True)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
            return u.to(tl.float32, bitcast=True)
        else:
            return x.to(dt).to(tl.float32)

    @triton.jit
    def _rope_head(x_ptr, o_ptr, c_ptr, s_ptr, sxd, sod, scd, ssd, offs, D, R, BF16: tl.constexpr):
        # one head vector: o[d] = x[d]*c[d] + rot[d]*s[d] for d < R (rot = cat(-x2, x1) over the first R
        # dims), o[d] = x[d] beyond; each product and the sum rounded to the dtype, as transformers' ops do
        half = R // 2
        in_head = offs < D
        rotated = offs < R
        first = offs < half
        partner = tl.where(first, offs + half, offs - half)
        x = tl.load(x_ptr + offs * sxd, mask=in_head, other=0.0)
        xp = tl.load(x_ptr + partner * sxd, mask=rotated, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + offs * scd, mask=rotated, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs * ssd, mask=rotated, other=0.0).to(tl.float32)
        dt = o_ptr.dtype.element_ty
        a = _round(x.to(tl.float32) * c, dt, BF16)
        b = _round(tl.where(first, -xp, xp) * s, dt, BF16)
        y = _round(a + b, dt, BF16).to(dt)  # exact: y is already a value of dt
        tl.store(o_ptr + offs * sod, tl.where(rotated, y, x), mask=in_head)

    @triton.jit
    def _rope_kernel(
        q_ptr,
        k_ptr,
        cos_ptr,
        sin_ptr,
        qo_ptr,
        ko_ptr,
        HQ,
        T,
        D,
        R,
        sqb,
        sqh,
        sqt,
        sqd,
        skb,
        skh,
        skt,
        skd,
        sqob,
        sqoh,
        sqot,
        sqod,
        skob,
        skoh,
        skot,
        skod,
        scb,
        sct,
        scd,
        ssb,
        sst,
        ssd,
        BLOCK_D: tl.constexpr,
        BF16: tl.constexpr,
    ):
        # grid: (B*T, HQ + HK); heads below HQ are q's, the rest k's
        bt = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        b = bt // T
        t = bt % T
        offs = tl.arange(0, BLOCK_D)
        c_ptr = cos_ptr + b * scb + t * sct
        s_ptr = sin_ptr + b * ssb + t * sst
        if h < HQ:
            _rope_head(
                q_ptr + b * sqb + h * sqh + t * sqt,
                qo_ptr + b * sqob + h * sqoh + t * sqot,
                c_ptr,
                s_ptr,
                sqd,
                sqod,
                scd,
                ssd,
                offs,
                D,
                R,
                BF16,
            )
        else:
            hk = h - HQ
            _rope_head(
                k_ptr + b * skb + hk * skh + t * skt,
                ko_ptr + b * skob + hk * skoh + t * skot,
                c_ptr,
                s_ptr,
                skd,
                skod,
                scd,
                ssd,
                offs,
                D,
                R,
                BF16,
            )


def supported(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim=1
) -> bool:
    """Whether the kernel handles these arguments: q [B, Hq, T, D], k [B, Hk, T, D], cos = sin [B or 1, T, R]
    with R even and R <= D, one dtype of `DTYPES`, one device, no autograd. Any strides."""
    if unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    if not (q.dtype == k.dtype == cos.dtype == sin.dtype) or q.dtype not in DTYPES:
        return False
    if not (q.device == k.device == cos.device == sin.device):
        return False
    bsz, _, t, d = q.shape
    r = cos.shape[2]
    if k.shape[0] != bsz or k.shape[2:] != q.shape[2:] or cos.shape[0] not in (1, bsz) or cos.shape[1] != t:
        return False
    if r == 0 or r % 2 or r > d or q.numel() == 0 or k.numel() == 0:
        return False
    grads = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, cos, sin))
    return not grads


def fused_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `apply_rotary_pos_emb(q, k, cos, sin)` in one launch, for arguments `supported` accepts.

    Same values, shapes and dtype; the outputs are contiguous. (transformers' own outputs follow q's
    stride order, which differs from contiguous only when T > 1 and q is a transposed view.)"""
    bsz, hq, t, d = q.shape
    hk = k.shape[1]
    r = cos.shape[2]
    cos = cos.expand(bsz, t, r)
    sin = sin.expand(bsz, t, r)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    block = triton.next_power_of_2(d)
    _rope_kernel[(bsz * t, hq + hk)](
        q,
        k,
        cos,
        sin,
        qo,
        ko,
        hq,
        t,
        d,
        r,
        *q.stride(),
        *k.stride(),
        *qo.stride(),
        *ko.stride(),
        *cos.stride(),
        *sin.stride(),
        BLOCK_D=block,
        BF16=q.dtype == torch.bfloat16,
        num_warps=1 if block <= 256 else 4,
        enable_fp_fusion=False,  # a fused multiply-add would skip the product's rounding that torch does
    )
    return qo, ko
