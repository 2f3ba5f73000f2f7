"""A pre-attention predictor (`engine.prefetch.nets`) as two or three Triton kernels, for the tap inside a
decode step, where torch's path is a chain of small launches (linear, activation, linear, top-k).

Shape legend: T = tokens, d = model hidden size, H = predictor hidden size, E = routed experts, M = ids
kept per row.

- `hidden`: h[t] = act(W1 x[t] + b1), one program per (row, block of H); fp32 sums, and the roundings of
  the unfused ops (the linear's output, then the activation's, in the weights' dtype). Arch 2's SiLU, or
  Arch 1's GELU (erf) after its BatchNorm, which `fold_batchnorm` folds into W1 and b1 once (eval mode:
  Dropout is the identity).
- `logits`: s[t] = W2 h[t] + b2, one program per (row, block of E); `top_ids` then takes the M best with
  torch.topk.
- `logits_top_ids`: the same logits and the M best ids in one program per row (E up to 256, M up to 16),
  ties to the lowest id: one launch fewer, but one program reads all of W2 (E x H), so it pays only where
  W2 is small (a narrow predictor).

`PredictorKernels(layer)` holds one predictor's (folded) weights and runs it either way; which is faster,
at which width, is measured by `bench/predictor_cost.py` on the GPU before the prefetcher uses it. The
scores are the predictor's up to rounding (BatchNorm folded; the sums' order), so the ids can differ from
torch's at a near tie; predictions steer copies only, never outputs.

Imports torch and (where it runs) Triton only.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # Triton is absent from CPU builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None

SILU, GELU = 0, 1
MAX_FUSED_EXPERTS, MAX_FUSED_IDS = 256, 16

if triton is not None:

    @triton.jit
    def _row_gemv(
        x_ptr, w_ptr, b_ptr, t, offs, ok, K, stride_xt, stride_w, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr
    ):  # fmt: skip
        # fp32 W[offs] x[t] + b[offs] for a row-major W [N, K], offs [BLOCK] (`ok`: offs < N)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + t * stride_xt + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(
                w_ptr + offs[:, None].to(tl.int64) * stride_w + offs_k[None, :],
                mask=ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        return acc + tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)

    @triton.jit
    def _hidden_kernel(
        x_ptr, w_ptr, b_ptr, h_ptr, D, H, stride_xt, stride_wn, stride_ht,
        ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # h[t, n] = act(sum_k W1[n, k] x[t, k] + b1[n]), rounded as linear then activation would round
        t = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < H
        z = _row_gemv(x_ptr, w_ptr, b_ptr, t, offs_n, n_ok, D, stride_xt, stride_wn, BLOCK_N, BLOCK_K)
        dt = h_ptr.dtype.element_ty
        z = z.to(dt).to(tl.float32)
        if ACT == 0:
            a = z * tl.sigmoid(z)
        else:
            a = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        tl.store(h_ptr + t * stride_ht + offs_n, a.to(dt), mask=n_ok)

    @triton.jit
    def _logits_kernel(
        h_ptr, w_ptr, b_ptr, s_ptr, H, E, stride_ht, stride_we, stride_st,
        BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # s[t, e] = sum_k W2[e, k] h[t, k] + b2[e]
        t = tl.program_id(0)
        offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        e_ok = offs_e < E
        s = _row_gemv(h_ptr, w_ptr, b_ptr, t, offs_e, e_ok, H, stride_ht, stride_we, BLOCK_E, BLOCK_K)
        tl.store(s_ptr + t * stride_st + offs_e, s.to(s_ptr.dtype.element_ty), mask=e_ok)

    @triton.jit
    def _logits_top_ids_kernel(
        h_ptr, w_ptr, b_ptr, ids_ptr, H, E, stride_ht, stride_we, stride_it,
        M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        # the row's E logits (rounded to the weights' dtype, as torch's linear would), then its M best ids
        t = tl.program_id(0)
        offs_e = tl.arange(0, BLOCK_E)
        e_ok = offs_e < E
        s = _row_gemv(h_ptr, w_ptr, b_ptr, t, offs_e, e_ok, H, stride_ht, stride_we, BLOCK_E, BLOCK_K)
        s = s.to(h_ptr.dtype.element_ty).to(tl.float32)
        s = tl.where(e_ok, s, float("-inf"))
        for i in tl.static_range(M):
            best = tl.max(s, axis=0)
            pick = tl.min(tl.where(s == best, offs_e, BLOCK_E), axis=0)  # the lowest id among ties
            tl.store(ids_ptr + t * stride_it + i, pick.to(tl.int64))
            s = tl.where(offs_e == pick, float("-inf"), s)


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of Linear then BatchNorm in eval mode as one linear, folded in float32, in the linear's dtype."""
    w, b = linear.weight.float(), linear.bias.float()
    scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)  # [H]
    folded_b = (b - bn.running_mean.float()) * scale + bn.bias.float()
    return (w * scale[:, None]).to(linear.weight.dtype), folded_b.to(linear.weight.dtype)


class PredictorKernels:
    """One predictor (`build_predictor`'s Sequential, either architecture, eval mode) as Triton kernels;
    the weights are views of the module's (Arch 2) or its folded copy (Arch 1)."""

    def __init__(self, predictor: nn.Sequential, block_n: int = 64, block_k: int = 128) -> None:
        if triton is None:
            raise RuntimeError("the predictor kernels need Triton, which this build of torch lacks")
        first, last = predictor[0], predictor[-1]
        if isinstance(predictor[1], nn.BatchNorm1d):  # Arch 1: Linear, BatchNorm1d, GELU, Dropout, Linear
            self.w1, self.b1 = fold_batchnorm(first, predictor[1])
            self.act = GELU
        elif isinstance(predictor[1], nn.SiLU):  # Arch 2: Linear, SiLU, Linear
            self.w1, self.b1 = first.weight.detach(), first.bias.detach()
            self.act = SILU
        else:
            raise ValueError(f"not a predictor of engine.prefetch.nets: {predictor}")
        self.w2, self.b2 = last.weight.detach(), last.bias.detach()
        self.hidden_size, self.d_model = self.w1.shape
        self.num_experts = self.w2.shape[0]
        self.block_n, self.block_k = block_n, block_k

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """h [T, H] (the weights' dtype) for x [T, d] (cast to it)."""
        x = x.reshape(-1, self.d_model).to(self.w1.dtype).contiguous()
        h = torch.empty((x.shape[0], self.hidden_size), dtype=self.w1.dtype, device=x.device)
        grid = (x.shape[0], triton.cdiv(self.hidden_size, self.block_n))
        _hidden_kernel[grid](
            x, self.w1, self.b1, h, self.d_model, self.hidden_size, x.stride(0), self.w1.stride(0), h.stride(0),
            ACT=self.act, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
        )  # fmt: skip
        return h

    def scores(self, x: torch.Tensor, block_e: int = 32) -> torch.Tensor:
        """Logits [T, E] (the weights' dtype): the predictor's `forward` up to rounding."""
        h = self.hidden(x)
        s = torch.empty((h.shape[0], self.num_experts), dtype=self.w2.dtype, device=h.device)
        grid = (h.shape[0], triton.cdiv(self.num_experts, block_e))
        _logits_kernel[grid](
            h, self.w2, self.b2, s, self.hidden_size, self.num_experts, h.stride(0), self.w2.stride(0), s.stride(0),
            BLOCK_E=block_e, BLOCK_K=self.block_k,
        )  # fmt: skip
        return s

    def top_ids(self, x: torch.Tensor, m: int, fused: bool = False) -> torch.Tensor:
        """The M best expert ids per row [T, M] (int64), best first: logits then torch.topk, or with `fused`
        one kernel for both (E <= 256, M <= 16)."""
        if not fused:
            return torch.topk(self.scores(x), m, dim=-1).indices
        if self.num_experts > MAX_FUSED_EXPERTS or m > MAX_FUSED_IDS:
            raise ValueError(
                f"the fused top-k takes at most {MAX_FUSED_EXPERTS} experts and {MAX_FUSED_IDS} ids, "
                f"not {self.num_experts} and {m}"
            )
        h = self.hidden(x)
        ids = torch.empty((h.shape[0], m), dtype=torch.int64, device=h.device)
        block_e = triton.next_power_of_2(self.num_experts)
        _logits_top_ids_kernel[(h.shape[0],)](
            h, self.w2, self.b2, ids, self.hidden_size, self.num_experts, h.stride(0), self.w2.stride(0), ids.stride(0),
            M=m, BLOCK_E=block_e, BLOCK_K=max(16, min(self.block_k, 8192 // block_e)),
        )  # fmt: skip
        return ids
