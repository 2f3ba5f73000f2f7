"""One request as the engine thread sees it: prompt, sampling state, KV row, output, timings.

Plain data plus the request's own stats; the engine thread is the only writer once it is queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.api.protocol import SamplingParams, TokenDelta
from engine.api.stats import RequestStats
from engine.core.grammar import Matcher
from engine.core.sampling import SamplingState
from engine.core.text_stream import TextStream


@dataclass(eq=False)
class Sequence:
    request_id: str
    params: SamplingParams
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[TokenDelta | BaseException], None]
    stream: TextStream
    arrival: float
    row: int | None = None  # KV row while running
    length: int = 0  # tokens in its KV row
    done: bool = False
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    gaps: list[float] = field(default_factory=list)
    sampling: SamplingState | None = None  # penalties' and logit_bias's state (engine.core.sampling)
    matcher: Matcher | None = None  # grammar state of a constrained request (engine.core.grammar)

    def token_at(self, now: float) -> None:
        """Account a new token's timing (time to first token, gaps between tokens)."""
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            self.gaps.append(now - self.last_token_at)
        self.last_token_at = now

    def stats(self, finish_reason: str) -> RequestStats:
        end = time.perf_counter()
        return RequestStats(
            prompt_tokens=len(self.prompt_ids),
            generation_tokens=len(self.out_ids),
            time_to_first_token=None if self.first_token_at is None else self.first_token_at - self.arrival,
            time_per_output_token=tuple(self.gaps),
            e2e_latency=end - self.arrival,
            queue_time=(self.scheduled_at or end) - self.arrival,
            finish_reason=finish_reason,
        )
