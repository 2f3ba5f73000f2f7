"""The fused router patch: every top-k router the kernel reproduces gets a forward that runs it.

`fuse_routers(model)` keeps each router's projection (cuBLAS) and does the softmax, top-k and
renormalisation in one kernel (`engine.kernels.fused_router.softmax_topk`). A router gets the fused
forward only after a check on the GPU, per router class: on random input and on input full of ties
(logits drawn from a handful of values) the kernel must choose the same experts as the module's own
forward (equal scores: the lowest ids, as torch.topk on CUDA keeps them), each with its weight within a
few float32 rounding steps (the order among equal weights may differ); the variant (renormalised or
not, cast back or not) is found by the same check. A router whose forward computes anything else
(grouped selection, sigmoid scores, bias corrections, another return shape) keeps its own forward, with
one log line. CUDA with Triton only; elsewhere nothing changes. The new forward is an instance attribute
(`mod.forward`, with `mod._fused_topk`, `_fused_norm`, `_fused_cast`), so it lives and dies with the
model.

Imports torch and `engine.kernels`.
"""

from __future__ import annotations

import copy
import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.fused_router import MAX_EXPERTS, softmax_topk
from engine.kernels.triton_guard import triton

log = logging.getLogger(__name__)


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
