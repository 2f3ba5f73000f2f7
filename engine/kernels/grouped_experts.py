"""Routed experts of a few tokens computed straight from the cache's slot pool, with no host sync.

The decode-time experts path: every (token, chosen expert) pair looks its expert's slot up in the
cache's device slot table, and the projections read the weights from the slot pool where they lie.
On CUDA with Triton, one "slot GEMV" kernel per projection does every pair at once (no weight copy);
elsewhere the pairs' weights are gathered and multiplied with `bmm`. The math follows transformers'
`batched_mm` experts (per-pair projections, the module's own gate / activation / post-expert norm,
routing weights, a sum over the k choices), so every family's flags work unchanged.

Shapes: T = tokens, k = experts per token, P = T*k pairs, S = cache slots, D = hidden, N / K = a
projection's output / input size.

Imports torch, Triton through `engine.kernels.triton_guard`, the block configurations' tuner
`engine.kernels.autotune`, and (to recognise transformers' default gate) transformers' MoE integration.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.kernels.autotune import DOWN_CONFIGS, _tuned
from engine.kernels.triton_guard import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _slot_gemv_kernel(
        x_ptr,
        w_ptr,
        slot_ptr,
        table_ptr,
        host_ptr,
        y_ptr,
        N,
        K,
        stride_xp,
        stride_ws,
        stride_wn,
        stride_wk,
        stride_yp,
        stride_hs,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        LOOKUP: tl.constexpr,
        HOST: tl.constexpr,
    ):
        # y[p, n] = sum_k W[slot[p], n, k] * x[p, k]   (fp32 accumulation, y rounded to its dtype); with
        # LOOKUP, `slot_ptr` holds pair p's expert id and the slot is table[expert] (the down projection of
        # the fused SiLU experts, one program per pair and block, so a step of a few tokens fills the GPU);
        # with HOST, an expert without a slot (table[expert] < 0) is read from host memory instead
        p = tl.program_id(0)
        nb = tl.program_id(1)
        if LOOKUP:
            expert = tl.load(slot_ptr + p).to(tl.int64)
            slot = tl.load(table_ptr + expert).to(tl.int64)
        else:
            expert = p
            slot = tl.load(slot_ptr + p).to(tl.int64)
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        w_base = w_ptr + slot * stride_ws
        if HOST:
            if slot < 0:
                w_base = host_ptr + expert * stride_hs
        w_row = w_base + offs_n[:, None].to(tl.int64) * stride_wn
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + p * stride_xp + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(w_row + offs_k[None, :] * stride_wk, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        tl.store(y_ptr + p * stride_yp + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _gate_up_silu_kernel(
        x_ptr,
        idx_ptr,
        table_ptr,
        w_ptr,
        host_ptr,
        log_ptr,
        h_ptr,
        INTER,
        D,
        TOP_K,
        stride_xt,
        stride_ws,
        stride_wn,
        stride_wd,
        stride_hp,
        stride_hs,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        HOST: tl.constexpr,
        LOG: tl.constexpr,
    ):
        # pair p = (token t, choice j): h[p] = silu(W_gate[slot] x[t]) * (W_up[slot] x[t]), with the
        # slot looked up in the table and the roundings of the unfused ops (linear out, silu out, product).
        # HOST: an expert without a slot (table < 0) is read from host memory; LOG: log[p] = the slot read
        p = tl.program_id(0)
        nb = tl.program_id(1)
        t = p // TOP_K
        expert = tl.load(idx_ptr + p).to(tl.int64)
        slot = tl.load(table_ptr + expert).to(tl.int64)
        if LOG:
            tl.store(log_ptr + p, slot.to(tl.int32), mask=nb == 0)
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < INTER
        w_base = w_ptr + slot * stride_ws
        if HOST:
            if slot < 0:
                w_base = host_ptr + expert * stride_hs
        w_gate = w_base + offs_n[:, None].to(tl.int64) * stride_wn
        w_up = w_gate + INTER * stride_wn
        acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < D
            m = n_ok[:, None] & k_ok[None, :]
            x = tl.load(x_ptr + t * stride_xt + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            acc_g += tl.sum(
                tl.load(w_gate + offs_k[None, :] * stride_wd, mask=m, other=0.0).to(tl.float32) * x, axis=1
            )
            acc_u += tl.sum(
                tl.load(w_up + offs_k[None, :] * stride_wd, mask=m, other=0.0).to(tl.float32) * x, axis=1
            )
        dt = h_ptr.dtype.element_ty
        g = acc_g.to(dt).to(tl.float32)
        u = acc_u.to(dt).to(tl.float32)
        act = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
        tl.store(h_ptr + p * stride_hp + offs_n, (act * u).to(dt), mask=n_ok)

    @triton.jit
    def _down_sum_kernel(
        h_ptr,
        idx_ptr,
        wts_ptr,
        table_ptr,
        w_ptr,
        host_ptr,
        y_ptr,
        D,
        INTER,
        stride_hp,
        stride_ws,
        stride_wn,
        stride_wk,
        stride_yt,
        stride_hs,
        TOP_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        HOST: tl.constexpr,
    ):
        # y[t] = sum_j w[t, j] * (W_down[slot(t, j)] h[t*k + j])   (fp32 sum, one rounding at the end)
        t = tl.program_id(0)
        nb = tl.program_id(1)
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < D
        dt = y_ptr.dtype.element_ty
        out = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            p = t * TOP_K + j
            expert = tl.load(idx_ptr + p).to(tl.int64)
            slot = tl.load(table_ptr + expert).to(tl.int64)
            gate_w = tl.load(wts_ptr + p).to(tl.float32)
            w_base = w_ptr + slot * stride_ws
            if HOST:
                if slot < 0:
                    w_base = host_ptr + expert * stride_hs
            w_row = w_base + offs_n[:, None].to(tl.int64) * stride_wn
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for k0 in range(0, INTER, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < INTER
                h = tl.load(h_ptr + p * stride_hp + offs_k, mask=k_ok, other=0.0).to(tl.float32)
                w = tl.load(
                    w_row + offs_k[None, :] * stride_wk, mask=n_ok[:, None] & k_ok[None, :], other=0.0
                )
                acc += tl.sum(w.to(tl.float32) * h[None, :], axis=1)
            out += acc.to(dt).to(tl.float32) * gate_w
        tl.store(y_ptr + t * stride_yt + offs_n, out.to(dt), mask=n_ok)

    @triton.jit
    def _weighted_sum_kernel(
        y_ptr, wts_ptr, out_ptr, D, stride_yp, stride_ot, TOP_K: tl.constexpr, BLOCK: tl.constexpr
    ):
        # out[t] = sum_j w[t, j] * y[t*k + j] in fp32, in j order, one rounding: what the fused kernel does
        t = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < D
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            p = t * TOP_K + j
            gate_w = tl.load(wts_ptr + p).to(tl.float32)
            acc += tl.load(y_ptr + p * stride_yp + offs, mask=ok, other=0.0).to(tl.float32) * gate_w
        tl.store(out_ptr + t * stride_ot + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _launch(x, w, slots, y, n, k, stride_n, stride_k, cfg) -> None:
    block_n, block_k, warps = cfg
    grid = (x.shape[0], triton.cdiv(n, block_n))
    _slot_gemv_kernel[grid](
        x, w, slots, slots, w, y, n, k, x.stride(0), w.stride(0), stride_n, stride_k, y.stride(0), 0,
        BLOCK_N=block_n, BLOCK_K=block_k, LOOKUP=False, HOST=False, num_warps=warps,
    )  # fmt: skip


def slot_gemv(x: torch.Tensor, w: torch.Tensor, slots: torch.Tensor, transposed: bool) -> torch.Tensor:
    """x: [P, K]; w: [S, N, K] ([S, K, N] when transposed); slots: [P] -> y: [P, N] (x's dtype)."""
    if transposed:
        n, k = w.shape[2], w.shape[1]
        stride_n, stride_k = w.stride(2), w.stride(1)
    else:
        n, k = w.shape[1], w.shape[2]
        stride_n, stride_k = w.stride(1), w.stride(2)
    x = x.contiguous()
    y = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)  # [P, N]
    key = (n, k, x.shape[0], transposed, x.dtype)
    cfg = _tuned(key, lambda c: _launch(x, w, slots, y, n, k, stride_n, stride_k, c))
    _launch(x, w, slots, y, n, k, stride_n, stride_k, cfg)
    return y


def fused_silu_experts(
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    slot_row: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    up_cfg: tuple | None = None,
    down_cfg: tuple | None = None,
    host: tuple[torch.Tensor, torch.Tensor] | None = None,
    slot_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """The common expert (gate/up halves, SiLU, no bias, not transposed) in two or three kernels, slots
    looked up inside them. hidden: [T, D]; top_k_*: [T, k]; gate_up: [S, 2I, D]; down: [S, D, I] -> [T, D].

    `host`: the layer's (gate_up [E, 2I, D], down [E, D, I]) in host memory the GPU can address (mapped
    page-locked memory): a pair whose expert has no slot (slot_row[e] < 0) reads its weights from there,
    over PCIe, inside the same kernels. `slot_log` ([T*k] int32): each pair's slot as the kernels saw it
    (-1: read from host). `up_cfg` / `down_cfg` force a kernel configuration (tests); otherwise the fastest
    is timed once."""
    t, k = top_k_index.shape
    d, i2 = hidden.shape[1], gate_up.shape[1]
    inter = i2 // 2
    hidden = hidden.contiguous()
    idx = top_k_index.reshape(-1).contiguous()  # [P]
    wts = top_k_weights.reshape(-1).contiguous()  # [P]
    h = torch.empty((t * k, inter), dtype=hidden.dtype, device=hidden.device)  # [P, I]
    y = torch.empty((t, d), dtype=hidden.dtype, device=hidden.device)  # [T, D]
    on_host = host is not None
    host_gu, host_dn = host if on_host else (gate_up, down)
    if on_host and (
        host_gu.stride()[1:] != gate_up.stride()[1:] or host_dn.stride()[1:] != down.stride()[1:]
    ):
        raise ValueError("host expert weights must have the slot pool's layout within an expert")
    log = slot_log if slot_log is not None else idx

    def up(cfg) -> None:
        bn, bk, warps = cfg
        _gate_up_silu_kernel[(t * k, triton.cdiv(inter, bn))](
            hidden, idx, slot_row, gate_up, host_gu, log, h, inter, d, k,
            hidden.stride(0), gate_up.stride(0), gate_up.stride(1), gate_up.stride(2), h.stride(0),
            host_gu.stride(0),
            BLOCK_N=bn, BLOCK_K=bk, HOST=on_host, LOG=slot_log is not None, num_warps=warps,
        )  # fmt: skip

    def dn(cfg) -> None:
        how, bn, bk, warps = cfg
        if how == "fused":
            _down_sum_kernel[(t, triton.cdiv(d, bn))](
                h, idx, wts, slot_row, down, host_dn, y, d, inter,
                h.stride(0), down.stride(0), down.stride(1), down.stride(2), y.stride(0), host_dn.stride(0),
                TOP_K=k, BLOCK_N=bn, BLOCK_K=bk, HOST=on_host, num_warps=warps,
            )  # fmt: skip
            return
        pairs = torch.empty((t * k, d), dtype=hidden.dtype, device=hidden.device)  # [P, D]
        _slot_gemv_kernel[(t * k, triton.cdiv(d, bn))](
            h, down, idx, slot_row, host_dn, pairs, d, inter,
            h.stride(0), down.stride(0), down.stride(1), down.stride(2), pairs.stride(0), host_dn.stride(0),
            BLOCK_N=bn, BLOCK_K=bk, LOOKUP=True, HOST=on_host, num_warps=warps,
        )  # fmt: skip
        block = min(1024, triton.next_power_of_2(d))
        _weighted_sum_kernel[(t, triton.cdiv(d, block))](
            pairs, wts, y, d, pairs.stride(0), y.stride(0), TOP_K=k, BLOCK=block, num_warps=4
        )

    # the keys leave out `on_host`: reading some weights from the host changes addresses, not the sums, so
    # the streamed and the segmented steps of one shape share a configuration and compute the same values
    up(up_cfg or _tuned(("gate_up_silu", inter, d, t * k, hidden.dtype), up))
    dn(down_cfg or _tuned(("down_sum", d, inter, t, k, hidden.dtype), dn, DOWN_CONFIGS))
    return y


def _gather_linear(x: torch.Tensor, w: torch.Tensor, slots: torch.Tensor, transposed: bool) -> torch.Tensor:
    sel = w.index_select(0, slots)  # [P, N, K] (or [P, K, N]): a copy of the chosen experts' weights
    if transposed:
        return torch.bmm(x.unsqueeze(1), sel).squeeze(1)  # [P, N]
    return torch.bmm(sel, x.unsqueeze(-1)).squeeze(-1)  # [P, N]


def _plain_silu_expert(mod: nn.Module) -> bool:
    """Gate and up halves, SiLU, no bias, [out, in] weights: what the fused kernels compute."""
    from transformers.integrations.moe import _default_apply_gate

    act = getattr(mod, "act_fn", None)
    return (
        mod.has_gate
        and getattr(mod, "is_concatenated", True)
        and not mod.is_transposed
        and not getattr(mod, "has_bias", False)
        and not getattr(mod, "has_post_expert_norm", False)
        and getattr(type(mod), "_apply_gate", None) is _default_apply_gate
        and type(act).__name__ in ("SiLU", "SiLUActivation")
    )


class GroupedExperts:
    """Computes a layer's routed experts for a few tokens from slots; `use_triton` picks the kernels."""

    def __init__(self, weights: dict[str, torch.Tensor], use_triton: bool) -> None:
        self.weights = weights  # name -> [S, *shape] views of the cache's slot pool
        self.use_triton = use_triton
        self._fusable: dict[type, bool] = {}

    def fusable(self, mod: nn.Module) -> bool:
        """Whether `mod`'s experts run as the fused SiLU kernels (which can also read from host memory)."""
        fusable = self._fusable.get(type(mod))
        if fusable is None:
            fusable = self._fusable[type(mod)] = _plain_silu_expert(mod)
        return fusable

    def reads_host(self, mod: nn.Module) -> bool:
        """Whether a step may leave `mod`'s missing experts in host memory (read there by the kernels)."""
        return self.use_triton and self.fusable(mod)

    def _linear(
        self, mod: nn.Module, x: torch.Tensor, name: str, slots: torch.Tensor
    ) -> torch.Tensor:  # x: [P, K] -> [P, N]
        w = self.weights[name]
        if self.use_triton:
            y = slot_gemv(x, w, slots, mod.is_transposed)
        else:
            y = _gather_linear(x, w, slots, mod.is_transposed)
        if getattr(mod, "has_bias", False):
            y = y + self.weights[name + "_bias"].index_select(0, slots)  # [P, N]
        return y

    def forward(
        self,
        mod: nn.Module,
        hidden: torch.Tensor,
        slot_row: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        host: dict[str, torch.Tensor] | None = None,
        slot_log: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # hidden: [T, D]; slot_row: [E] int32 (expert -> slot); top_k_index, top_k_weights: [T, k].
        # host (name -> [E, *shape] views of the layer's mapped host store) and slot_log: see
        # `fused_silu_experts`; only for experts `reads_host(mod)` accepts
        if self.use_triton and self.fusable(mod):
            w = self.weights
            return fused_silu_experts(
                hidden, top_k_index, top_k_weights, slot_row, w["gate_up_proj"], w["down_proj"],
                host=None if host is None else (host["gate_up_proj"], host["down_proj"]), slot_log=slot_log,
            )  # fmt: skip
        if host is not None:
            raise ValueError(f"{type(mod).__name__} experts cannot read missing experts from host memory")
        t, k = top_k_index.shape
        slots = slot_row.index_select(0, top_k_index.reshape(-1)).long()  # [P]
        x = hidden.repeat_interleave(k, dim=0)  # [P, D]
        if mod.has_gate:
            h = mod._apply_gate(self._linear(mod, x, "gate_up_proj", slots))  # [P, I]
        else:
            h = mod.act_fn(self._linear(mod, x, "up_proj", slots))  # [P, I]
        y = self._linear(mod, h, "down_proj", slots)  # [P, D]
        if getattr(mod, "has_post_expert_norm", False):
            y = mod.post_expert_norm(y)
        y = y * top_k_weights.reshape(-1, 1).to(y.dtype)  # [P, D]
        return y.view(t, k, -1).sum(dim=1).to(hidden.dtype)  # [T, D]
