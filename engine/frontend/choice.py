"""A decode step's next tokens, every row at once: each row's grammar mask and penalties, its draw launched
on the device (`engine.core.sampling.draw`), one host sync for the whole step (`resolve`), then each row's
penalty counts, grammar advance and logprobs.

A row's failure (a mask, the penalties, nothing finite to choose, a token its grammar refuses) is that row's
`Choice.error`; only the one sync can raise for all (a device fault: the caller classifies it). Logprobs are
of the model's distribution, before any constraint or penalty. Imports `engine.core` and `engine.api` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.api.errors import RequestFailed
from engine.core.logprobs import TokenTable, token_logprobs
from engine.core.sampling import draw, resolve, state_for
from engine.core.sequence import Sequence


@dataclass
class Choice:
    seq: Sequence
    token: int | None = None
    logprobs: tuple = ()
    error: Exception | None = None


def choose(
    rows: list[tuple[Sequence, torch.Tensor, torch.Tensor | None]], tokens: TokenTable
) -> list[Choice]:
    """rows: (sequence, its logits [V], its grammar's allowed tokens [V] when computed for the batch, else
    None) -> one `Choice` per row, in order."""
    out = [Choice(seq) for seq, _, _ in rows]
    pending = []  # (choice, raw logits, draw)
    for c, (seq, logits, allowed) in zip(out, rows, strict=True):
        try:
            raw = logits
            if seq.matcher is not None:  # grammar-constrained: only the tokens it allows can be drawn
                if allowed is None:
                    allowed = seq.matcher.allowed(logits.device)
                logits = torch.where(allowed, logits, float("-inf"))  # one kernel, not a negation and a fill
            seq.sampling = state_for(seq.sampling, seq.params, seq.prompt_ids, logits)
            pending.append((c, raw, draw(logits, seq.params, seq.generator, seq.sampling)))
        except Exception as err:
            c.error = err
    for (c, raw, _), tok in zip(pending, resolve([d for _, _, d in pending]), strict=True):
        seq = c.seq
        try:
            if isinstance(tok, RequestFailed):
                raise tok
            if seq.sampling is not None:
                seq.sampling.accept(tok)
            if seq.matcher is not None:
                seq.matcher.advance(tok)
            if seq.params.logprobs is not None:
                c.logprobs = (token_logprobs(raw, seq.params.logprobs, tok, tokens),)
            c.token = tok
        except Exception as err:
            c.error = err
    return out
