"""Next-token choice from logits: greedy, temperature, top-k, top-p, with a per-request generator.

A request's own `torch.Generator` (seeded from the request's seed) makes sampling reproducible
whatever else the engine runs concurrently.
"""

from __future__ import annotations

import torch

from engine.protocol import SamplingParams


def make_generator(
    params: SamplingParams, device: torch.device, fallback_seed: int
) -> torch.Generator | None:
    if params.temperature == 0.0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else fallback_seed)
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits: [V] (any float dtype) -> token id."""
    if params.temperature == 0.0 or generator is None:
        return int(torch.argmax(logits))
    x = logits.float() / params.temperature  # [V]
    if params.top_k and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        drop = cum - probs > params.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(0, order, sorted_x)
    probs = torch.softmax(x, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
