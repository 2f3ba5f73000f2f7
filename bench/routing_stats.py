"""Does the routing have structure? Statistics of a trace set's routing, per MoE layer and averaged.

- usage_entropy_bits: entropy of how often each expert is routed (over all token-expert slots); the maximum
  is log2(E) (every expert equally used). `usage_entropy_norm` divides by log2(E).
- token_entropy_bits: mean entropy of the router's softmax per token (low = confident routing).
- reuse_any: share of consecutive token pairs of one prompt whose top-k sets share at least one expert;
  `reuse_overlap`: mean |S_t ∩ S_t+1| / k. Both with the value independent uniform routing would give
  (`uniform_reuse_any` = 1 - C(E-k, k) / C(E, k), `uniform_reuse_overlap` = k / E).
Computed on the prompts `prompt_ids` when given (so a trained model and its random twin are compared on the
same tokens).
"""

from __future__ import annotations

import math

import torch

from predictors.traces import TraceSet


def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits along the last dim of a probability tensor."""
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(-1)


def uniform_reuse(num_experts: int, k: int) -> tuple[float, float]:
    """(P(two independent uniform top-k sets intersect), expected overlap / k)."""
    return 1.0 - math.comb(num_experts - k, k) / math.comb(num_experts, k), k / num_experts


def layer_stats(topk: torch.Tensor, scores: torch.Tensor, prompt_id: torch.Tensor, num_experts: int) -> dict:
    """Statistics of one layer: topk [N, k], scores [N, E] (softmax), prompt_id [N] in storage order."""
    k = topk.shape[1]
    counts = torch.bincount(topk.reshape(-1), minlength=num_experts).double()  # [E]
    usage = counts / counts.sum()
    same = prompt_id[1:] == prompt_id[:-1]  # [N-1] consecutive tokens of one prompt
    a, b = topk[:-1][same], topk[1:][same]  # [P, k]
    overlap = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1).double()  # [P]
    return {
        "usage_entropy_bits": float(_entropy_bits(usage)),
        "usage_entropy_norm": float(_entropy_bits(usage) / math.log2(num_experts)),
        "usage_max_share": float(usage.max()),
        "usage_min_share": float(usage.min()),
        "token_entropy_bits": float(_entropy_bits(scores.double()).mean()),
        "reuse_any": float((overlap > 0).double().mean()) if overlap.numel() else None,
        "reuse_overlap": float(overlap.mean() / k) if overlap.numel() else None,
        "pairs": int(overlap.numel()),
    }


def routing_stats(traces: TraceSet, prompt_ids: torch.Tensor | None = None) -> dict:
    """Per-layer statistics and their mean over layers, on the prompts `prompt_ids` (all when None)."""
    pid = traces.prompt_ids()
    mask = torch.isin(pid, prompt_ids) if prompt_ids is not None else torch.ones_like(pid, dtype=torch.bool)
    layers = []
    for i in range(traces.num_layers):
        data = traces.layer(i, mask)
        layers.append({"layer": i, **layer_stats(data.topk, data.scores, pid[mask], traces.num_experts)})
    keys = [k for k, v in layers[0].items() if isinstance(v, float)]
    mean = {k: sum(r[k] for r in layers) / len(layers) for k in keys}
    any_u, overlap_u = uniform_reuse(traces.num_experts, traces.top_k)
    return {
        "samples": int(mask.sum()),
        "prompts": int(pid[mask].unique().numel()),
        "num_experts": traces.num_experts,
        "top_k": traces.top_k,
        "max_entropy_bits": math.log2(traces.num_experts),
        "uniform_reuse_any": any_u,
        "uniform_reuse_overlap": overlap_u,
        "mean": mean,
        "layers": layers,
    }
