"""A predictor bank whose decode-step forwards run as one Triton kernel per layer (`MOE_PREDICTOR_KERNEL`).

`KernelBank(bank)` answers `forward_layer(i, x)` as the bank does: for a decode step (at most `MAX_ROWS`
tokens) through `engine.kernels.fused_predictor.PredictorKernels` (one launch: both linears, the
activation, the logits in fp32), for a prefill through the bank's own torch forward, where one GEMM over
many tokens is what torch does best. `top_ids(i, x, m)` is the same launch ranking the experts itself, for
the top-k policies (`exact`, `overprovision`, `top1`): no scores are written and no torch.topk follows,
which measured 8 µs of the 21 µs a layer's prediction cost with the scores path (bench/predictor_cost.py). The scores are the bank's up to rounding, so a near tie may rank
other experts; predictions steer copies only, never outputs.

Imports torch, `engine.kernels.fused_predictor` and `engine.prefetch.nets` only.
"""

from __future__ import annotations

import torch

from engine.kernels.fused_predictor import BLOCK_T, MAX_IDS, PredictorKernels, kernels_available
from engine.prefetch.nets import PredictorBank

MAX_ROWS = BLOCK_T  # one row block of the kernel: decode steps of up to 16 sequences


class KernelBank:
    """`bank` (a `PredictorBank` on a CUDA device, eval mode) with each layer's predictor as one kernel."""

    def __init__(self, bank: PredictorBank) -> None:
        self.bank = bank
        self.d_model, self.num_experts = bank.d_model, bank.num_experts
        self.kernels = [PredictorKernels(layer) for layer in bank.layers]

    def __len__(self) -> int:
        return len(self.bank)

    def forward_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Scores [T, E] of MoE layer `i`'s experts (fp32 from the kernel; the bank's dtype otherwise)."""
        x = x.reshape(-1, self.d_model)
        if x.shape[0] <= MAX_ROWS:
            return self.kernels[i].scores(x)
        return self.bank.forward_layer(i, x)

    def top_ids(self, i: int, x: torch.Tensor, m: int) -> torch.Tensor | None:
        """Layer `i`'s M best expert ids [T, M] from the kernel alone (no scores, no torch.topk) for a decode
        step; None for a prefill (the caller ranks `forward_layer`'s scores)."""
        x = x.reshape(-1, self.d_model)
        return self.kernels[i].top_ids(x, m) if x.shape[0] <= MAX_ROWS and m <= MAX_IDS else None


def kernel_bank(bank, device: torch.device, wanted: bool):
    """`bank` as a `KernelBank` where `wanted` and the kernel can run on `device` (a CUDA device with
    Triton); otherwise `bank` itself (a bank wrapped already, a CPU bank, a build without Triton)."""
    if wanted and isinstance(bank, PredictorBank) and kernels_available(device):
        return KernelBank(bank)
    return bank
