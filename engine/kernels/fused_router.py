"""The router's softmax, top-k and renormalisation in one Triton kernel.

transformers' top-k routers (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, ...) compute, per token:
logits = linear(x); probs = softmax(logits) in fp32; top-k of probs; optionally divide by their sum;
optionally cast back to the logits' dtype. At decode that is seven or eight tiny kernels per layer
(softmax, a radix top-k and a sort, a sum, a division, casts) after the projection. `fuse_routers(model)`
keeps the projection (cuBLAS) and does the rest in one kernel: one program per token, the top k taken
by k arg-max passes, ties to the lowest expert id.

A router gets the fused forward only after a check on the GPU, per router class: on random input and
on input full of ties (logits drawn from a handful of values) the kernel must choose the same experts
as the module's own forward (equal scores: the lowest ids, as torch.topk on CUDA keeps them), each with
its weight within a few float32 rounding steps (the order among equal weights may differ); the
variant (renormalised or not, cast back or not) is found by the same check. A router whose forward
computes anything else (grouped selection, sigmoid scores, bias corrections, another return shape)
keeps its own forward, with one log line. CUDA with Triton only; elsewhere nothing changes.
"""

from __future__ import annotations

import copy
import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.triton_guard import triton

log = logging.getLogger(__name__)

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


def _fused_forward(self, hidden_states: torch.Tensor):
    x = hidden_states.reshape(-1, self.weight.shape[1])
    logits = F.linear(x, self.weight, getattr(self, "bias", None))  # [T, E]
    vals, idx = softmax_topk(logits, self._fused_topk, self._fused_norm)
    return logits, (vals.to(logits.dtype) if self._fused_cast else vals), idx


def _candidate(mod: nn.Module, k: int, norm: bool, cast: bool):
    probe = types.SimpleNamespace(weight=mod.weight, bias=getattr(mod, "bias", None))
    probe._fused_topk, probe._fused_norm, probe._fused_cast = k, norm, cast
    return lambda x: _fused_forward(probe, x)


def _same(want, got) -> bool:
    """Same logits, same chosen experts per token, weights within a few float32 rounding steps. Among
    equal scores torch.topk on CUDA keeps the lowest ids (as the kernel does) but may list them in any
    order, so the experts are compared as sets, each with its weight."""
    if not (isinstance(want, tuple) and len(want) == 3):
        return False
    (wl, ws, wi), (gl, gs, gi) = want, got
    if ws.dtype != gs.dtype or wi.dtype != gi.dtype or ws.shape != gs.shape or wi.shape != gi.shape:
        return False
    if not torch.equal(wl, gl):
        return False
    wi, w_order = wi.sort(dim=-1)
    gi, g_order = gi.sort(dim=-1)
    if not torch.equal(wi, gi):
        return False
    ws, gs = ws.gather(-1, w_order).float(), gs.gather(-1, g_order).float()
    tol = 4 * torch.finfo(want[1].dtype).eps * ws.abs() + 1e-7
    return bool(((gs - ws).abs() <= tol).all())


def _variant(mod: nn.Module) -> tuple[int, bool, bool] | None:
    """(k, renormalise, cast back) with which the kernel reproduces the module, or None."""
    w = mod.weight
    k = getattr(mod, "top_k", None)
    if not isinstance(k, int) or w.dim() != 2 or not 1 <= k <= w.shape[0] <= MAX_EXPERTS:
        return None
    gen = torch.Generator(device=w.device).manual_seed(0)
    x = torch.randn((33, w.shape[1]), generator=gen, device=w.device).to(w.dtype)
    # ties: a copy whose rows repeat four distinct rows (logits take four values per token), and x = 0
    # (every logit equal): the kernel must pick the experts torch.topk picks among equal scores
    tied = copy.deepcopy(mod)
    pick = torch.randint(0, 4, (w.shape[0],), generator=gen, device=w.device)
    with torch.no_grad():
        tied.weight.copy_(w[:4][pick])
    cases = ((mod, x), (tied, x), (mod, torch.zeros_like(x)))
    with torch.no_grad():
        try:
            wants = [type(m).forward(m, inp) for m, inp in cases]  # the class's own forward, no hooks
        except Exception:
            return None
        for norm in (True, False):
            for cast in (True, False):
                if all(
                    _same(want, _candidate(m, k, norm, cast)(inp))
                    for want, (m, inp) in zip(wants, cases, strict=True)
                ):
                    return k, norm, cast
    return None


def fuse_routers(model: nn.Module) -> int:
    """Give every top-k router whose output the kernel reproduces the fused forward; returns how many.
    The check runs once per router class, k, expert count and dtype (a model's layers share one)."""
    if triton is None:
        return 0
    checked: dict[tuple, tuple[int, bool, bool] | None] = {}
    fused = 0
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if (
            not type(mod).__name__.endswith("Router")
            or not isinstance(w, torch.Tensor)
            or w.device.type != "cuda"
            or getattr(mod, "_fused_topk", None) is not None
        ):
            continue
        key = (type(mod), getattr(mod, "top_k", None), tuple(w.shape), w.dtype)
        if key not in checked:
            checked[key] = _variant(mod)
            if checked[key] is None:
                log.info(
                    "%s keeps its own forward: the fused router does not reproduce it", type(mod).__name__
                )
        variant = checked[key]
        if variant is None:
            continue
        mod._fused_topk, mod._fused_norm, mod._fused_cast = variant
        mod.forward = types.MethodType(_fused_forward, mod)
        fused += 1
    return fused
