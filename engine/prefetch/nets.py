"""Predictor architectures and the per-layer bank the engine calls (`predictors` trains it).

Shape legend: T = tokens, d = model hidden size, H = predictor hidden size, E = routed experts.

- Arch 1: Linear(d→H) → BatchNorm1d(H) → GELU → Dropout(0.1) → Linear(H→E)   (paper: with ranking-aware BCE)
- Arch 2: Linear(d→H) → SiLU → Linear(H→E)                                  (paper: with weighted BCE)

H = 2048 in the paper. The outputs are logits (one per expert); ranking them gives the predicted experts.

Imports torch only.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = (1, 2)


def build_predictor(
    arch: int, d_model: int, num_experts: int, hidden: int = 2048, dropout: float = 0.1
) -> nn.Module:
    """One predictor: x[T, d] -> logits[T, E]."""
    if arch == 1:
        return nn.Sequential(
            nn.Linear(d_model, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_experts),
        )
    if arch == 2:
        return nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, num_experts))
    raise ValueError(f"unknown predictor architecture {arch!r}: choose one of {ARCHS}")


class PredictorBank(nn.Module):
    """One predictor per MoE layer (index = position among MoE layers, not the decoder-layer id)."""

    def __init__(
        self, arch: int, d_model: int, num_experts: int, num_layers: int, hidden: int = 2048
    ) -> None:
        super().__init__()
        self.arch = arch
        self.d_model = d_model
        self.num_experts = num_experts
        self.hidden = hidden
        self.layers = nn.ModuleList(
            build_predictor(arch, d_model, num_experts, hidden) for _ in range(num_layers)
        )
        # How often each expert was routed in the training split: the frequency-prior baseline, and a
        # fallback ranking for the engine. Filled by training, saved with the weights.
        self.register_buffer("expert_counts", torch.zeros(num_layers, num_experts))  # [L, E]

    def __len__(self) -> int:
        return len(self.layers)

    def forward_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Scores (logits) of MoE layer `i`'s experts for x[T, d] (any float dtype; cast to the bank's)."""
        layer = self.layers[i]
        w = layer[0].weight
        x = x.reshape(-1, self.d_model).to(device=w.device, dtype=w.dtype)  # [T, d]
        return layer(x)  # [T, E]
