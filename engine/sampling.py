"""Next-token choice from logits: greedy, temperature, top-k, top-p, with a per-request generator.

A request's own `torch.Generator` (seeded from the request's seed) makes sampling reproducible
whatever else the engine runs concurrently.

Any logits give a token id in [0, V) or `RequestFailed`: NaN entries never win (they count as -inf), +inf
entries share the whole probability (the limit of a huge finite logit), and a row with no finite or +inf
entry is refused. Sampling works in float64 on logits minus their maximum, so the largest entry is 0 after
any temperature and a tiny temperature (1e-300) turns into greedy instead of overflowing to NaN.
"""

from __future__ import annotations

import torch

from engine.errors import RequestFailed
from engine.protocol import SamplingParams

NO_FINITE_LOGITS = "the model produced no finite logits for this request (all NaN or -inf)"


def make_generator(
    params: SamplingParams, device: torch.device, fallback_seed: int
) -> torch.Generator | None:
    if params.temperature == 0.0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else fallback_seed)
    return gen


def _checked(tok: torch.Tensor, best: torch.Tensor) -> int:
    # one host sync for both: the token id and whether any entry could be chosen at all
    tok_id, best_value = torch.stack((tok.reshape(()).double(), best.reshape(()).double())).tolist()
    if best_value == float("-inf"):
        raise RequestFailed(NO_FINITE_LOGITS)
    return int(tok_id)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits: [V] (any float dtype) -> token id."""
    x = logits.double()  # [V]
    x = x.masked_fill(torch.isnan(x), float("-inf"))
    if params.temperature == 0.0 or generator is None:
        tok = torch.argmax(x)
        return _checked(tok, x[tok])
    best = x.amax()
    posinf = x == float("inf")  # [V]
    # +inf entries: uniform among them; otherwise shift so the largest is 0 before dividing (no overflow)
    scaled = torch.where(
        posinf.any(), torch.where(posinf, 0.0, float("-inf")), (x - best) / params.temperature
    )  # [V]
    # a row with nothing to choose: sample from zeros (no NaN reaches multinomial), refuse afterwards
    x = torch.where(best == float("-inf"), torch.zeros_like(x), scaled)
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
    probs = torch.softmax(x, dim=-1)  # the largest entry is 0, so the sum is >= 1: never NaN
    return _checked(torch.multinomial(probs, 1, generator=generator), best)
