"""A request's sampling fields as the engine's `SamplingParams`, one per choice (seed + i for choice i).

Imports `engine.api.protocol` and `server.schemas`.
"""

from __future__ import annotations

from engine.api.protocol import Constraint, SamplingParams
from server.schemas import UINT64_MAX, SamplingFields

# Temperatures in (0, GREEDY_BELOW) are decoded greedily, as vLLM does below the same 1e-5. There the
# runner-up's weight is exp(-gap / temperature), e^-100 for a logit gap of 1e-3: only near-exact ties
# could come out differently. Far below it, logits / temperature leaves float32's range (1e-300 is 0
# in float32) and softmax gives NaN.
GREEDY_BELOW = 1e-5


def sampling(
    body: SamplingFields,
    max_tokens: int | None,
    choice: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    constraint: Constraint | None = None,
) -> SamplingParams:
    seed = body.seed
    if seed is not None and choice:
        seed += choice
        if seed > UINT64_MAX:
            seed -= 2**64
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=seed,
        stop=body.stop_tuple(),
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        min_p=body.min_p or 0.0,
        logit_bias=body.logit_bias_pairs(),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        constraint=constraint,
    )
