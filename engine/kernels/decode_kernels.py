"""The two Triton kernels of a decode step's attention: the KV write and single-query attention.

At decode every row adds one token. transformers' path writes its key and value with two `index_put_`
launches, repeats the KV heads for grouped-query attention (two copies) and turns the boolean mask into
sdpa's form (a few more launches) before the attention kernel itself. Here:

- `write_step_kv`: one launch copies every row's new key and value into the static buffers at the
  row's position, read from a device tensor (so a captured graph writes where the replayed step says).
- `decode_attention`: one launch computes, for every row b and query head h, softmax(q·K^T · scale) V
  over the row's keys j ≤ pos[b] (and j > pos[b] - window with a sliding window), reading K and V of KV
  head h // (Hq / Hk) straight from the buffers: no repeated heads, no mask tensor. Scores, softmax and
  the weighted sum are in fp32 (online softmax over key blocks). Long spans are split over programs and
  a second launch combines the splits.

Both take any strides (transposed views, MLA's split key/value halves, different key and value head
dims). They run on CUDA tensors, and on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
the tests); `engine.kernels.triton_guard.kernels_run_on` says which.

Shapes: B = rows in the step, Hq / Hk = query / KV heads, L = positions (kv_len), Dk / Dv = key / value
head dims, S = key splits.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

MAX_HEAD_DIM = 256  # larger head dims fall back to transformers (one row of K or V per thread block)
SPLIT = 256  # keys per program when a span is longer than this; shorter spans run in one launch

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _write_kv_kernel(
        k_new_ptr,
        v_new_ptr,
        keys_ptr,
        values_ptr,
        pos_ptr,
        snk_b,
        snk_h,
        snk_d,
        snv_b,
        snv_h,
        snv_d,
        sk_r,
        sk_h,
        sk_l,
        sk_d,
        sv_r,
        sv_h,
        sv_l,
        sv_d,
        DK,
        DV,
        BLOCK_DK: tl.constexpr,
        BLOCK_DV: tl.constexpr,
    ):
        # row b, KV head h: keys[b, h, pos[b]] = k_new[b, h]; values[b, h, pos[b]] = v_new[b, h]
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        p = tl.load(pos_ptr + b).to(tl.int64)
        dk = tl.arange(0, BLOCK_DK)
        k = tl.load(k_new_ptr + b * snk_b + h * snk_h + dk * snk_d, mask=dk < DK)
        tl.store(keys_ptr + b * sk_r + h * sk_h + p * sk_l + dk * sk_d, k, mask=dk < DK)
        dv = tl.arange(0, BLOCK_DV)
        v = tl.load(v_new_ptr + b * snv_b + h * snv_h + dv * snv_d, mask=dv < DV)
        tl.store(values_ptr + b * sv_r + h * sv_h + p * sv_l + dv * sv_d, v, mask=dv < DV)

    @triton.jit
    def _decode_attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        pos_ptr,
        out_ptr,
        m_ptr,
        l_ptr,
        sq_b,
        sq_h,
        sq_d,
        sk_b,
        sk_h,
        sk_l,
        sk_d,
        sv_b,
        sv_h,
        sv_l,
        sv_d,
        so_b,
        so_h,
        so_s,
        scale,
        window,
        chunk,
        GROUP,
        DK,
        DV,
        SPLITS,
        BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr,
        BLOCK_DV: tl.constexpr,
        PARTIAL: tl.constexpr,
    ):
        # program (b, h, s): query head h of row b over the keys of split s that the row may see.
        # PARTIAL: store the split's running max, sum and unnormalised output (combined by the next
        # kernel); otherwise the split is the whole span and the normalised output is stored.
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        s = tl.program_id(2)
        kvh = h // GROUP
        p = tl.load(pos_ptr + b).to(tl.int32)
        lo = s * chunk
        hi = tl.minimum(lo + chunk, p + 1)  # keys j <= pos
        if window > 0:
            lo = tl.maximum(lo, p - window + 1)  # and j > pos - window
        dk = tl.arange(0, BLOCK_DK)
        dv = tl.arange(0, BLOCK_DV)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + dk * sq_d, mask=dk < DK, other=0.0).to(tl.float32)
        k_base = k_ptr + b * sk_b + kvh * sk_h
        v_base = v_ptr + b * sv_b + kvh * sv_h
        m_i = -float("inf")
        l_i = 0.0
        acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
        # blocks aligned to BLOCK_N; every block started holds at least one key in [lo, hi)
        for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs = n0 + tl.arange(0, BLOCK_N)
            ok = (offs >= lo) & (offs < hi)
            rows = offs.to(tl.int64)
            k = tl.load(
                k_base + rows[:, None] * sk_l + dk[None, :] * sk_d,
                mask=ok[:, None] & (dk[None, :] < DK),
                other=0.0,
            ).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1) * scale
            scores = tl.where(ok, scores, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=0))
            alpha = tl.exp(m_i - m_new)
            prob = tl.exp(scores - m_new)
            v = tl.load(
                v_base + rows[:, None] * sv_l + dv[None, :] * sv_d,
                mask=ok[:, None] & (dv[None, :] < DV),
                other=0.0,
            ).to(tl.float32)
            acc = acc * alpha + tl.sum(prob[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(prob, axis=0)
            m_i = m_new
        if PARTIAL:
            part = b * so_b + h * so_h + s * so_s
            tl.store(out_ptr + part + dv, acc, mask=dv < DV)
            stat = (b * tl.num_programs(1) + h) * SPLITS + s
            tl.store(m_ptr + stat, m_i)
            tl.store(l_ptr + stat, l_i)
        else:
            o = acc / l_i
            tl.store(out_ptr + b * so_b + h * so_h + dv, o.to(out_ptr.dtype.element_ty), mask=dv < DV)

    @triton.jit
    def _combine_splits_kernel(
        part_ptr,
        m_ptr,
        l_ptr,
        out_ptr,
        sp_b,
        sp_h,
        sp_s,
        so_b,
        so_h,
        SPLITS,
        DV,
        BLOCK_S: tl.constexpr,
        BLOCK_DV: tl.constexpr,
    ):
        # out[b, h] = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s; empty splits have m_s = -inf
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        sp = tl.arange(0, BLOCK_S)
        dv = tl.arange(0, BLOCK_DV)
        stat = (b * tl.num_programs(1) + h) * SPLITS + sp
        m = tl.load(m_ptr + stat, mask=sp < SPLITS, other=-float("inf"))
        lsum = tl.load(l_ptr + stat, mask=sp < SPLITS, other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))
        acc = tl.load(
            part_ptr + b * sp_b + h * sp_h + sp[:, None].to(tl.int64) * sp_s + dv[None, :],
            mask=(sp[:, None] < SPLITS) & (dv[None, :] < DV),
            other=0.0,
        )
        o = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * lsum, axis=0)
        tl.store(out_ptr + b * so_b + h * so_h + dv, o.to(out_ptr.dtype.element_ty), mask=dv < DV)


def write_step_kv(
    keys: torch.Tensor, values: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, pos: torch.Tensor
) -> None:
    """keys: [R, Hk, L, Dk], values: [R, Hk, L, Dv] buffers; k_new: [B, Hk, 1, Dk], v_new: [B, Hk, 1, Dv]
    (any strides); pos: [B] -> row b's new key and value written at position pos[b] of row b."""
    b, hk = k_new.shape[0], k_new.shape[1]
    dk, dv = k_new.shape[3], v_new.shape[3]
    _write_kv_kernel[(b, hk)](
        k_new, v_new, keys, values, pos,
        k_new.stride(0), k_new.stride(1), k_new.stride(3),
        v_new.stride(0), v_new.stride(1), v_new.stride(3),
        keys.stride(0), keys.stride(1), keys.stride(2), keys.stride(3),
        values.stride(0), values.stride(1), values.stride(2), values.stride(3),
        dk, dv, BLOCK_DK=triton.next_power_of_2(dk), BLOCK_DV=triton.next_power_of_2(dv), num_warps=1,
    )  # fmt: skip


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """q: [B, Hq, 1, Dk]; k: [B, Hk, L, Dk]; v: [B, Hk, L, Dv] (any strides); pos: [B], each < L
    -> [B, 1, Hq, Dv] in q's dtype: the layout transformers' attention functions return.

    Row b attends keys j with j <= pos[b] (and j > pos[b] - window); query head h reads KV head
    h // (Hq / Hk)."""
    bsz, hq, _, dk = q.shape
    hk, kv_len, dv = k.shape[1], k.shape[2], v.shape[3]
    block_dk, block_dv = triton.next_power_of_2(dk), triton.next_power_of_2(dv)
    block_n = max(16, min(64, 8192 // max(block_dk, block_dv)))  # a K or V tile of <= 8192 elements
    out = torch.empty((bsz, 1, hq, dv), dtype=q.dtype, device=q.device)  # [B, 1, Hq, Dv]
    splits = triton.cdiv(kv_len, SPLIT) if kv_len > SPLIT else 1
    common = dict(
        scale=float(scale), window=int(window or 0), chunk=SPLIT if splits > 1 else kv_len,
        GROUP=hq // hk, DK=dk, DV=dv, SPLITS=splits,
        BLOCK_N=block_n, BLOCK_DK=block_dk, BLOCK_DV=block_dv, num_warps=4,
    )  # fmt: skip
    strides = (
        q.stride(0), q.stride(1), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
    )  # fmt: skip
    if splits == 1:
        _decode_attention_kernel[(bsz, hq, 1)](
            q, k, v, pos, out, out, out, *strides, out.stride(0), out.stride(2), 0, PARTIAL=False, **common
        )
        return out
    part = torch.empty((bsz, hq, splits, dv), dtype=torch.float32, device=q.device)  # [B, Hq, S, Dv]
    stats = torch.empty((2, bsz, hq, splits), dtype=torch.float32, device=q.device)  # running max, sum
    _decode_attention_kernel[(bsz, hq, splits)](
        q, k, v, pos, part, stats[0], stats[1], *strides, part.stride(0), part.stride(1), part.stride(2),
        PARTIAL=True, **common,
    )  # fmt: skip
    _combine_splits_kernel[(bsz, hq)](
        part, stats[0], stats[1], out, part.stride(0), part.stride(1), part.stride(2),
        out.stride(0), out.stride(2), splits, dv,
        BLOCK_S=triton.next_power_of_2(splits), BLOCK_DV=block_dv, num_warps=4,
    )  # fmt: skip
    return out
