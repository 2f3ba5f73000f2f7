"""Routed experts for training (`bench/train_moe.py`): two grouped GEMMs instead of a per-expert loop.

Shape legend: T = tokens, k = experts per token, S = token-expert pairs (T*k), D = hidden, I = expert width,
E = experts.

`grouped_experts_forward` is registered in transformers' `ExpertsInterface` as `train_grouped` and works on
any v5 `Experts` module without biases (gate or not, transposed or not): pairs sorted by expert, one
`grouped_mm` up (+ gate), one down, weighted and summed back per token. bf16 on CUDA (the kernels have no
autocast; fp32 master weights are cast), float32 on the CPU (where bf16 matmuls are slow without AMX).
`choose_experts_implementation` probes it against a per-expert loop (forward + backward) on the model's own
first experts module and falls back to transformers' eager experts if it fails or disagrees, so a kernel
missing on some torch build costs speed, not the run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMPLEMENTATION = "train_grouped"


def _gmm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, transposed: bool) -> torch.Tensor:
    # x [S, in]; w [E, out, in] (or [E, in, out] when transposed); offs [E] int32 cumulative rows -> [S, out]
    fn = getattr(F, "grouped_mm", None) or torch._grouped_mm
    return fn(x, w if transposed else w.transpose(-2, -1), offs=offs)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16 on CUDA; float32 on the CPU, where bf16 matmuls are slow without AMX / AVX512-BF16
    return torch.bfloat16 if x.device.type == "cuda" else torch.float32


def grouped_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Routed experts as two grouped GEMMs (bf16 on CUDA; training only); hidden_states [T, D] -> [T, D]."""
    if getattr(self, "has_bias", False):
        raise NotImplementedError("train_grouped handles experts without biases")
    t, k = top_k_index.shape
    flat = top_k_index.reshape(-1)  # [S]
    order = flat.argsort(stable=True)  # [S] pairs sorted by expert
    token = order // k  # [S]
    counts = torch.histc(flat.float(), bins=self.num_experts, min=0, max=self.num_experts - 1)  # [E], no sync
    offs = counts.cumsum(0).to(torch.int32)  # [E]
    cd = _compute_dtype(hidden_states)
    x = hidden_states[token].to(cd)  # [S, D]
    w_in = self.gate_up_proj if self.has_gate else self.up_proj
    h = _gmm(x, w_in.to(cd), offs, self.is_transposed)  # [S, 2I] or [S, I]
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)  # [S, I]
    y = _gmm(h, self.down_proj.to(cd), offs, self.is_transposed)  # [S, D]
    y = y.float() * top_k_weights.reshape(-1)[order, None].float()  # [S, D]
    out = torch.zeros(t, y.shape[1], dtype=torch.float32, device=y.device).index_add(0, token, y)  # [T, D]
    return out.to(hidden_states.dtype)


def loop_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Reference for the probe: one expert at a time, same bf16 rounding as the grouped version."""
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)  # [T, D]
    cd = _compute_dtype(hidden_states)
    w_in = self.gate_up_proj if self.has_gate else self.up_proj
    for e in range(self.num_experts):
        tok, pos = torch.where(top_k_index == e)
        if tok.numel() == 0:
            continue
        wi, wo = w_in[e].to(cd), self.down_proj[e].to(cd)
        h = hidden_states[tok].to(cd) @ (wi if self.is_transposed else wi.T)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        y = h @ (wo if self.is_transposed else wo.T)
        out.index_add_(0, tok, y.float() * top_k_weights[tok, pos, None].float())
    return out.to(hidden_states.dtype)


def choose_experts_implementation(model: nn.Module, device: torch.device) -> dict:
    """Register `train_grouped` and switch `model` to it if a forward+backward on the first experts module
    agrees with the per-expert loop (max relative error < 3e-2); else keep transformers' eager experts."""
    from transformers.integrations.moe import ExpertsInterface

    from engine.model.model_map import find_moe_layers

    ExpertsInterface.register(IMPLEMENTATION, grouped_experts_forward)
    experts = find_moe_layers(model)[0].experts
    g = torch.Generator(device="cpu").manual_seed(0)
    n, k = 96, int(model.config.num_experts_per_tok)
    x = torch.randn(n, int(model.config.hidden_size), generator=g).to(device).requires_grad_()
    idx = torch.stack([torch.randperm(experts.num_experts, generator=g)[:k] for _ in range(n)]).to(device)
    w = torch.rand(n, k, generator=g).to(device)
    try:
        y = grouped_experts_forward(experts, x, idx, w)
        y.square().sum().backward()
        y = y.detach()
        with torch.no_grad():
            ref = loop_experts_forward(experts, x.detach(), idx, w)
        err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))  # relative
        experts.zero_grad(set_to_none=True)
    except Exception as e:  # any failure of the grouped kernels means: use the eager loop
        return {"experts_implementation": "eager", "grouped_probe": f"failed: {type(e).__name__}: {e}"[:300]}
    if not err < 3e-2:
        return {"experts_implementation": "eager", "grouped_probe": f"max relative error {err:.3g}"}
    model.set_experts_implementation(IMPLEMENTATION)
    return {"experts_implementation": IMPLEMENTATION, "grouped_probe": f"max relative error {err:.3g}"}
