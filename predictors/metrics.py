"""Prediction metrics on `(scores[N, E], true_topk[N, k])` (paper notes, "Metrics").

- set_accuracy: predicted top-k equals the true top-k as a set (strict "exact match", reading (a)).
- recall_at_k: mean fraction of the true top-k found in the predicted top-k (reading (b); the paper's
  93-98% "exact-match" figures are most plausibly this one).
- overprovision_recall(k'): mean fraction of the true top-k found in the predicted top-k' (k' > k).
- top1_accuracy: the single best predicted expert is in the true top-k.

Each function returns a float in [0, 1]; the `*_hits` helpers return per-sample values so callers can pool.
"""

from __future__ import annotations

import math

import torch


def _hits(scores: torch.Tensor, true_topk: torch.Tensor, kp: int) -> torch.Tensor:
    """hits[N]: how many of the true top-k are among the predicted top-kp."""
    kp = min(kp, scores.shape[1])
    pred = scores.topk(kp, dim=1).indices  # [N, kp]
    return (pred[:, :, None] == true_topk.long()[:, None, :]).any(dim=1).sum(dim=1)  # [N]


def recall_hits(scores: torch.Tensor, true_topk: torch.Tensor, kp: int | None = None) -> torch.Tensor:
    """Per-sample recall[N] of the true top-k within the predicted top-kp (kp = k by default)."""
    k = true_topk.shape[1]
    return _hits(scores, true_topk, k if kp is None else kp).float() / k


def set_hits(scores: torch.Tensor, true_topk: torch.Tensor) -> torch.Tensor:
    """Per-sample bool[N]: predicted top-k set == true top-k set."""
    k = true_topk.shape[1]
    return _hits(scores, true_topk, k) == k


def top1_hits(scores: torch.Tensor, true_topk: torch.Tensor) -> torch.Tensor:
    """Per-sample bool[N]: argmax of the scores is one of the true top-k."""
    best = scores.argmax(dim=1)  # [N]
    return (true_topk.long() == best[:, None]).any(dim=1)


def set_accuracy(scores: torch.Tensor, true_topk: torch.Tensor) -> float:
    return set_hits(scores, true_topk).float().mean().item()


def recall_at_k(scores: torch.Tensor, true_topk: torch.Tensor) -> float:
    return recall_hits(scores, true_topk).mean().item()


def overprovision_recall(scores: torch.Tensor, true_topk: torch.Tensor, k_prime: int) -> float:
    return recall_hits(scores, true_topk, k_prime).mean().item()


def top1_accuracy(scores: torch.Tensor, true_topk: torch.Tensor) -> float:
    return top1_hits(scores, true_topk).float().mean().item()


def default_k_prime(k: int, num_experts: int) -> int:
    """ceil(1.5 k), capped at E: 9 of 6 for DeepSeek-V2-Lite, 12 of 8 for Qwen3-30B, 3 of 2 for Phi-mini-MoE."""
    return min(num_experts, math.ceil(1.5 * k))


def all_metrics(
    scores: torch.Tensor, true_topk: torch.Tensor, k_prime: int, sweep: list[int] | None = None
) -> dict[str, object]:
    """set_accuracy, recall_at_k, top1_accuracy, overprov_recall (at k_prime) and, given `sweep`, recall_sweep."""
    out: dict[str, object] = {
        "set_accuracy": set_accuracy(scores, true_topk),
        "recall_at_k": recall_at_k(scores, true_topk),
        "top1_accuracy": top1_accuracy(scores, true_topk),
        "overprov_recall": overprovision_recall(scores, true_topk, k_prime),
    }
    if sweep:
        out["recall_sweep"] = {str(kp): overprovision_recall(scores, true_topk, kp) for kp in sweep}
    return out
