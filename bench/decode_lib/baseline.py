"""The plain transformers forward (every expert on the GPU, transformers' default experts code,
DynamicCache) as the baseline: batch 1 and the batched sizes; skipped when the weights do not fit.

Imports torch, `bench.common` and `engine.model.loader` only.
"""

from __future__ import annotations

import torch

from bench.common import plain_batched, plain_decode
from bench.decode_lib.batched import batch_rows
from bench.decode_lib.record import Record, log
from engine.model.loader import CacheBudget, replace_cache


def plain_baseline(om, segments: list, plain_tokens: int, batches: list[int], record: Record) -> None:
    """`record.data["plain"]` (and `["batched"]["plain"]`); the plain forward's greedy tokens go to the
    record, which checks the engine's first configuration against them."""
    replace_cache(om, CacheBudget(gigabytes=0.0))  # the pool's memory back for the plain forward's weights
    free, total = torch.cuda.mem_get_info()
    need = om.store.nbytes + (2 << 30)
    if need < free:
        prompt, feed = segments[1]
        plain = record.data["plain"] = plain_decode(om, prompt, feed[:plain_tokens], runs=3)
        record.plain_tokens = plain["tokens"]
        log(
            f"plain transformers forward: {plain['tok_s_median']:.2f} tok/s ({plain['experts_implementation']})"
        )
        for b in batches:
            res = plain_batched(om, batch_rows(segments, b, 1)[:b], runs=2)
            record.data.setdefault("batched", {}).setdefault("plain", {})[str(b)] = res
            log(f"plain transformers forward, batch {b}: {res['tok_s_median']:.1f} tok/s")
    else:
        record.data["plain"] = {
            "skipped": f"the weights need {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free of {total / 1e9:.0f}"
        }
        log(f"plain forward skipped: {record.data['plain']['skipped']}")
    record.write()
