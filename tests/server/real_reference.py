"""A second copy of the real engine's model, driven through its runner directly: the reference that the
logprobs and penalty tests compare the served answers with (same weights, same prompt, batch of one)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.api.config import EngineConfig
from engine.api.protocol import GenerationRequest, SamplingParams
from engine.frontend.admission import tokenize
from engine.frontend.async_engine import AsyncEngine

CONFIG = EngineConfig(device="cpu", max_running=4, max_waiting=16, seed=0)


class Reference:
    def __init__(self) -> None:
        self.engine = AsyncEngine.from_config(CONFIG)
        self.engine.load()
        self.runner = self.engine.runner

    def prompt_ids(self, *, messages=None, prompt=None) -> list[int]:
        req = GenerationRequest("ref", SamplingParams(), prompt=prompt, messages=messages)
        return tokenize(self.engine.tokenizer, req)

    def logits_along(self, prompt_ids: list[int], tokens: list[int]) -> list[torch.Tensor]:
        """The next-token logits [V] before each of `tokens` (generated after the prompt)."""
        out = [self.runner.prefill(0, prompt_ids).float().clone()]
        for i, tok in enumerate(tokens[:-1]):
            out.append(self.runner.decode([tok], [len(prompt_ids) + i])[0].float().clone())
        return out

    def greedy(
        self, prompt_ids: list[int], n: int, adjust: Callable[[torch.Tensor, list[int]], torch.Tensor]
    ) -> list[int]:
        """n greedy tokens, each the argmax of `adjust(logits, tokens so far)`."""
        toks: list[int] = []
        logits = self.runner.prefill(0, prompt_ids)
        for i in range(n):
            toks.append(int(torch.argmax(adjust(logits.double(), toks))))
            logits = self.runner.decode([toks[-1]], [len(prompt_ids) + i])[0]
        return toks
