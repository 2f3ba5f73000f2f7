"""Prefetch policies: a predictor's (or a router's) scores [T, E] become a ranked table of expert ids.

`build_policy(name, ...)` makes the policy `MOE_POLICY` names (the names and what each needs:
`engine.api.policies`); `union_best_first` merges the rows of a batch into one list, most chosen first.
Imports torch and `engine.api` only.
"""

from __future__ import annotations

import math

import torch

from engine.api.config import EngineConfig
from engine.api.policies import spec


class Policy:
    """Scores [T, E] -> id table (int64): each row's M ranked ids, and with `counted` a last column
    saying how many of them to take (otherwise all M)."""

    name = "?"
    width = 0  # M
    counted = False
    ranks_top_k = False  # whether `select` is torch.topk of width M (a ranker may give the ids directly)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TopK(Policy):
    ranks_top_k = True

    def __init__(self, name: str, m: int, num_experts: int) -> None:
        self.name = name
        self.width = min(m, num_experts)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.topk(scores, self.width, dim=-1).indices  # [T, M]


class Adaptive(Policy):
    """The fewest experts whose predicted mass reaches `target`, clamped to [k, max].

    The mass is the predictor's per-expert probability normalised over the experts: sigmoid of the
    logits for the BCE-family losses (each output is P(expert is routed)), the clipped outputs
    themselves for the MSE loss (which regresses the router's softmax scores).
    """

    name = "adaptive"
    counted = True

    def __init__(self, k: int, max_experts: int, target: float, num_experts: int, loss: str) -> None:
        self.k = min(k, num_experts)
        self.width = max(self.k, min(max_experts, num_experts))
        self.target = target
        self.mse = loss == "mse"

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.float()  # [T, E]
        p = s.clamp_min(0) if self.mse else torch.sigmoid(s)
        q = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        q, ids = torch.sort(q, dim=-1, descending=True)  # [T, E]
        before = torch.cumsum(q, dim=-1) - q  # mass of the better-ranked experts
        n = (before < self.target).sum(dim=-1, keepdim=True).clamp(self.k, self.width)  # [T, 1]
        return torch.cat([ids[:, : self.width], n], dim=1)  # [T, M+1]


def union_best_first(rows: list[list[int]], counted: bool = False) -> list[int]:
    """The union of the rows' ids (with `counted`, each row's first n, n = its last entry), most chosen
    first, then best rank."""
    if counted:
        rows = [row[: row[-1]] for row in rows]
    if len(rows) == 1:
        return rows[0]
    votes: dict[int, list[int]] = {}  # id -> [times chosen, best rank]
    for row in rows:
        for rank, e in enumerate(row):
            v = votes.get(e)
            if v is None:
                votes[e] = [1, rank]
            else:
                v[0] += 1
                v[1] = min(v[1], rank)
    return sorted(votes, key=lambda e: (-votes[e][0], votes[e][1], e))


def default_overprovision(k: int) -> int:
    return math.ceil(1.5 * k)


def build_policy(
    name: str,
    k: int,
    num_experts: int,
    *,
    overprovision: int | None = None,
    adaptive_target: float = EngineConfig.adaptive_target,
    adaptive_max: int | None = None,
    loss: str = "wbce",
) -> Policy:
    spec(name)  # ValueError for a name no registry entry has
    if name in ("exact", "crosslayer"):
        return TopK(name, k, num_experts)
    if name == "overprovision":
        return TopK(name, overprovision or default_overprovision(k), num_experts)
    if name == "top1":
        return TopK(name, 1, num_experts)
    if name == "adaptive":
        return Adaptive(k, adaptive_max or 2 * k, adaptive_target, num_experts, loss)
    raise ValueError(f"policy {name!r} does not rank experts (it needs no Policy object)")


def ahead_limit(capacity: int, top_k: int, shift: int) -> int | None:
    """The most experts one tap may pin when predictions are issued `shift` MoE layers ahead: layers
    l+1 .. l+shift hold their pins while layer l acquires, which leaves layer l room for a full top-k.
    None (no limit) for same-layer predictions."""
    return max(0, capacity - top_k) // shift if shift else None
