"""Next-token choice from logits: penalties, logit bias, greedy, temperature, min-p, top-k, top-p, with a
per-request generator.

A request's own `torch.Generator` (seeded from the request's seed) makes sampling reproducible
whatever else the engine runs concurrently.

Any logits give a token id in [0, V) or `RequestFailed`: NaN entries never win (they count as -inf), +inf
entries share the whole probability (the limit of a huge finite logit), and a row with no finite or +inf
entry is refused. Sampling works in float64 on logits minus their maximum, so the largest entry is 0 after
any temperature and a tiny temperature (1e-300) turns into greedy instead of overflowing to NaN.

Before the choice (greedy included: they move the argmax), in vLLM's order: `logit_bias` is added; the
repetition penalty (vLLM/HF: over prompt + generated tokens, a positive logit is divided by it, a
negative one multiplied) and then OpenAI's frequency and presence penalties (over the generated tokens:
logit -= frequency * count + presence * (count > 0)). Their state (`SamplingState`: counts on the
logits' device) is updated per accepted token without a host sync. After the temperature, `min_p`
drops every token whose probability is below min_p times the most likely one's.

`draw` chooses on the device without reading the choice; `resolve` reads a whole decode step's draws with
one host sync (a batch of n rows costs one round trip, not n); `sample` is the two for one row.
"""

from __future__ import annotations

import math

import torch

from engine.api.errors import RequestFailed
from engine.api.protocol import SamplingParams

NO_FINITE_LOGITS = "the model produced no finite logits for this request (all NaN or -inf)"


def make_generator(
    params: SamplingParams, device: torch.device, fallback_seed: int
) -> torch.Generator | None:
    if params.temperature == 0.0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else fallback_seed)
    return gen


def needs_state(params: SamplingParams) -> bool:
    return bool(
        params.frequency_penalty
        or params.presence_penalty
        or params.repetition_penalty != 1.0
        or params.logit_bias
    )


class SamplingState:
    """What the penalties and the bias need of one request, on the logits' device; None-free, sync-free."""

    def __init__(
        self, params: SamplingParams, prompt_ids: list[int], vocab: int, device: torch.device
    ) -> None:
        self.params = params
        self.counts: torch.Tensor | None = None  # [V] generated-token counts (frequency/presence)
        self.seen: torch.Tensor | None = None  # [V] bool: in prompt or generated (repetition)
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None  # ids [B], values [B]
        if params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(vocab, dtype=torch.float64, device=device)
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            ids = [t for t in prompt_ids if 0 <= t < vocab]
            if ids:
                self.seen[torch.tensor(ids, dtype=torch.long, device=device)] = True
        if params.logit_bias:
            pairs = [(t, b) for t, b in params.logit_bias if 0 <= t < vocab]
            ids = torch.tensor([t for t, _ in pairs], dtype=torch.long, device=device)
            values = torch.tensor([b for _, b in pairs], dtype=torch.float64, device=device)
            self.bias = (ids, values)

    def accept(self, token: int) -> None:
        """Count a generated token (device-side indexing with a Python int: no host sync)."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x: [V] float64 with no NaN -> the biased, penalised logits [V]. -inf stays -inf, +inf stays +inf."""
        p = self.params
        if self.bias is not None:
            ids, values = self.bias
            x = x.index_add(0, ids, values)
        if self.seen is not None:
            r = p.repetition_penalty
            x = torch.where(self.seen, torch.where(x > 0, x / r, x * r), x)
        if self.counts is not None:
            x = x - (p.frequency_penalty * self.counts + p.presence_penalty * (self.counts > 0).double())
        return x


def state_for(
    state: SamplingState | None, params: SamplingParams, prompt_ids: list[int], logits: torch.Tensor
) -> SamplingState | None:
    """The request's state, made at its first token (when the logits' size and device are known)."""
    if state is None and needs_state(params):
        state = SamplingState(params, prompt_ids, logits.shape[-1], logits.device)
    return state


class Draw:
    """A token chosen on the device and not read yet: its id and the largest logit it was chosen among
    (-inf: nothing could be chosen). `resolve` reads many draws with one host sync."""

    __slots__ = ("tok", "best")

    def __init__(self, tok: torch.Tensor, best: torch.Tensor) -> None:
        self.tok, self.best = tok, best


def resolve(draws: list[Draw]) -> list[int | RequestFailed]:
    """Each draw's token id, or `RequestFailed` for a row with nothing to choose; one host sync for all."""
    if not draws:
        return []
    toks = torch.stack([d.tok.reshape(()) for d in draws]).double()  # [n] (ids are exact in float64)
    bests = torch.stack([d.best.reshape(()) for d in draws]).double()  # [n]
    values = torch.cat((toks, bests)).tolist()  # the one host read
    n = len(draws)
    return [
        RequestFailed(NO_FINITE_LOGITS) if best == float("-inf") else int(tok)
        for tok, best in zip(values[:n], values[n:], strict=True)
    ]


def draw(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    state: SamplingState | None = None,
) -> Draw:
    """logits: [V] (any float dtype) -> the token chosen on the device, not read (no host sync). `state` is
    required when `needs_state(params)`."""
    inf = float("inf")
    x = torch.nan_to_num(logits.double(), nan=-inf, posinf=inf, neginf=-inf)  # [V]: NaN never wins
    if state is not None:
        x = state.apply(x)
    if params.temperature == 0.0 or generator is None:
        tok = torch.argmax(x)
        return Draw(tok, x[tok])
    best = x.amax()
    posinf = x == float("inf")  # [V]
    # +inf entries: uniform among them; otherwise shift so the largest is 0 before dividing (no overflow)
    scaled = torch.where(
        posinf.any(), torch.where(posinf, 0.0, float("-inf")), (x - best) / params.temperature
    )  # [V]
    # a row with nothing to choose: sample from zeros (no NaN reaches multinomial), refuse afterwards
    x = torch.where(best == float("-inf"), torch.zeros_like(x), scaled)
    if params.min_p > 0.0:  # the largest entry is 0 here: probability ratio to it is exp(x)
        x = x.masked_fill(x < math.log(params.min_p), float("-inf"))
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
    return Draw(torch.multinomial(probs, 1, generator=generator), best)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    state: SamplingState | None = None,
) -> int:
    """logits: [V] -> token id (one host sync); `RequestFailed` when nothing can be chosen."""
    (out,) = resolve([draw(logits, params, generator, state)])
    if isinstance(out, RequestFailed):
        raise out
    return out
