"""Runs the model for one sequence: prefill, then one decode step at a time, with a KV cache.

Knows nothing about requests, text or queues: it turns token ids into next-token logits. The
offloaded experts, the cache and (later) the prefetch tap are inside `model`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from engine.loader import OffloadedModel


class SequenceState:
    """The KV cache and last position of one sequence."""

    def __init__(self) -> None:
        self.kv = DynamicCache()
        self.length = 0


class ModelRunner:
    def __init__(self, om: OffloadedModel) -> None:
        self.om = om
        self.model = om.model
        self.device = om.device

    @torch.inference_mode()
    def forward(self, state: SequenceState, token_ids: list[int]) -> torch.Tensor:
        """Feed `token_ids` (the prompt, or one new token) and return the next-token logits [V]."""
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)  # [1, t]
        out = self.model(input_ids=ids, past_key_values=state.kv, use_cache=True, logits_to_keep=1)
        state.length += len(token_ids)
        return out.logits[0, -1]  # [V]

    def after_step(self) -> list[float]:
        """Read back stall timings that finished (CUDA); returns seconds per layer-step."""
        return self.om.cache.flush_stalls() if self.om.cache.cuda else []

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int] | None = None) -> list[int]:
        """Greedy decoding of one prompt (tests and benchmarks)."""
        state = SequenceState()
        logits = self.forward(state, prompt_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            out.append(tok)
            if eos and tok in eos:
                break
            logits = self.forward(state, [tok])
        return out
