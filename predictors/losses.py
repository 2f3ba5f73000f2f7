"""Training losses for the predictors (paper notes, "Losses"). Every constant is a keyword with the paper's value.

Shape legend: N = samples (tokens), E = experts, k = the router's top-k, n = the ranking window (10).
Every loss takes `(logits[N, E], affinity[N, E], topk_idx[N, k], **consts)` and returns a scalar:
`logits` are the predictor's raw outputs z, `affinity` the router's softmax scores s (float32), `topk_idx`
the router's true selection (the multi-label targets; for group-limited routers it can differ from the
top-k of `affinity`, so labels come from `topk_idx` and only the weights / ranks come from `affinity`).

Decisions (see docs/predictors.md):
- MSE regresses the raw outputs onto the affinity scores (`softmax=True` compares softmax(z) instead).
- Ranking term: averaged over the valid pairs of the batch (pairs (j, k) of one sample's true top-n by
  affinity with s_j > s_k strictly; ties give no pair), so lambda keeps its meaning whatever n, E and the batch
  size are. The paper writes a plain sum; a sum scales with the batch and would swamp the BCE term.
- Focal loss: the standard binary form (Lin et al. 2017), gamma 2, alpha 0.25; the paper gives no constants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F


def multi_hot(topk_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """labels[N, E] = 1.0 where expert j is in sample i's true top-k."""
    labels = torch.zeros(topk_idx.shape[0], num_experts, device=topk_idx.device)  # [N, E]
    return labels.scatter_(1, topk_idx.long(), 1.0)


def affinity_rank(affinity: torch.Tensor) -> torch.Tensor:
    """rank[N, E]: 0 for each sample's highest-affinity expert, E-1 for its lowest."""
    order = affinity.argsort(dim=1, descending=True)  # [N, E] expert ids, best first
    return order.argsort(dim=1)  # [N, E] position of each expert in that order


def _bce_terms(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """l_ij = log sigma(z) for positives, log(1 - sigma(z)) for negatives (numerically stable)."""
    return labels * F.logsigmoid(logits) + (1.0 - labels) * F.logsigmoid(-logits)  # [N, E]


def mse_loss(
    logits: torch.Tensor, affinity: torch.Tensor, topk_idx: torch.Tensor, *, softmax: bool = False
) -> torch.Tensor:
    """Mean over samples of sum_j (s_ij - s^_ij)^2, with s^ = z (or softmax(z) when `softmax`)."""
    pred = logits.float().softmax(dim=1) if softmax else logits.float()  # [N, E]
    return (pred - affinity.float()).pow(2).sum(dim=1).mean()


def weighted_bce_loss(
    logits: torch.Tensor,
    affinity: torch.Tensor,
    topk_idx: torch.Tensor,
    *,
    w_top: float = 3.0,
    w_rest: float = 0.5,
    top_n: int = 10,
) -> torch.Tensor:
    """-1/(N E) sum w_ij l_ij with w = w_top for the true top-`top_n` by affinity, w_rest otherwise."""
    z = logits.float()
    labels = multi_hot(topk_idx, z.shape[1])  # [N, E]
    rank = affinity_rank(affinity)  # [N, E]
    w = torch.where(rank < top_n, w_top, w_rest)  # [N, E]
    return -(w * _bce_terms(z, labels)).sum() / z.numel()


def pairwise_margin_loss(
    logits: torch.Tensor, affinity: torch.Tensor, *, margin: float = 0.1, top_n: int = 10
) -> torch.Tensor:
    """Mean over valid pairs of ReLU(m - (z_j - z_k)), pairs = (j, k) in a sample's true top-n with s_j > s_k."""
    n = min(top_n, affinity.shape[1])
    s_top, idx = affinity.float().topk(n, dim=1)  # [N, n], [N, n]
    z_top = logits.float().gather(1, idx)  # [N, n]
    valid = s_top[:, :, None] > s_top[:, None, :]  # [N, n, n] j ranked strictly above k
    hinge = F.relu(margin - (z_top[:, :, None] - z_top[:, None, :]))  # [N, n, n]
    count = valid.sum()
    if count == 0:
        return z_top.sum() * 0.0  # keeps the graph (and the device) when no pair is valid
    return (hinge * valid).sum() / count


def ranking_bce_loss(
    logits: torch.Tensor,
    affinity: torch.Tensor,
    topk_idx: torch.Tensor,
    *,
    w_top: float = 3.0,
    w_mid: float = 1.5,
    w_rest: float = 0.5,
    top_n: int = 10,
    mid_n: int = 30,
    lam: float = 0.3,
    margin: float = 0.1,
) -> torch.Tensor:
    """Tiered weighted BCE (w_top rank 1..top_n, w_mid up to mid_n, w_rest after) + lam * pairwise margin loss."""
    z = logits.float()
    labels = multi_hot(topk_idx, z.shape[1])  # [N, E]
    rank = affinity_rank(affinity)  # [N, E]
    w = torch.where(rank < top_n, w_top, torch.where(rank < mid_n, w_mid, w_rest))  # [N, E]
    bce = -(w * _bce_terms(z, labels)).sum() / z.numel()
    return bce + lam * pairwise_margin_loss(z, affinity, margin=margin, top_n=top_n)


def focal_loss(
    logits: torch.Tensor,
    affinity: torch.Tensor,
    topk_idx: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
) -> torch.Tensor:
    """Binary focal loss on the top-k labels, mean over N E: -alpha_t (1 - p_t)^gamma log p_t."""
    z = logits.float()
    labels = multi_hot(topk_idx, z.shape[1])  # [N, E]
    log_pt = _bce_terms(z, labels)  # [N, E] log p_t
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * (labels * alpha + (1.0 - labels) * (1.0 - alpha))
    return loss.mean()


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "mse": mse_loss,
    "wbce": weighted_bce_loss,
    "rank_bce": ranking_bce_loss,
    "focal": focal_loss,
}


def loss_constants(name: str, overrides: dict[str, float] | None = None) -> dict[str, object]:
    """The full constant set of loss `name` (defaults, then `overrides`); unknown names raise ValueError."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: choose one of {sorted(LOSSES)}")
    params = {
        p.name: p.default
        for p in inspect.signature(LOSSES[name]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ValueError(f"loss {name!r} has no constant {key!r}: it takes {sorted(params)}")
        default = params[key]
        if isinstance(default, bool):
            params[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            params[key] = int(value)
        elif value is None or str(value).lower() == "none":
            params[key] = None
        else:
            params[key] = float(value)
    return params
