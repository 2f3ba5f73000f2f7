"""Start-up warm-up (`MOE_WARMUP_TOKENS`): before the server reports ready, decode a few tokens of a fixed
prompt at every batch size a decode step can take (1, 2, 4, ... rows: the runner's buckets), so the first
requests do not pay for Triton's compilation and autotuning or the first CUDA graph captures of the
smallest KV length (on an H200 the first server of a soak waited 0.27 s for a token at one client).

The caller keeps it out of everything it reports: it zeroes the cache counters and the runner's step counts
and host clock after it (`CacheCounters.clear_counts`, `ModelRunner.reset_steps`, `HostClock.reset`), attaches
the stall and routing listeners only after it, and drops the prediction latencies it observed. The rows' KV
entries it wrote are overwritten by each request's prefill, as any earlier request's are; the experts it
brought stay cached, as an earlier request's would.

Imports `engine.runner` and `engine.api` only.
"""

from __future__ import annotations

import time

from engine.runner.runner import ModelRunner
from engine.runner.step_choice import bucket

WARMUP_TEXT = "Warm-up: a short text the engine decodes once at start, before the first request."


def warmup_default(device) -> int:
    """MOE_WARMUP_TOKENS when unset: 4 on CUDA; 0 on the CPU, where torch compiles nothing and a step of
    the built-in model takes tens of ms, so warming up would only delay the start."""
    return 4 if device.type == "cuda" else 0


def batch_sizes(rows: int) -> list[int]:
    """The decode batches a runner of `rows` KV rows rounds every step to (`bucket`): 1, 2, 4, ... and `rows`."""
    return sorted({bucket(n, 1, rows) for n in range(1, rows + 1)})


def warm_up(runner: ModelRunner, prompt_ids: list[int], tokens: int) -> dict:
    """Decode `tokens` steps at each batch size b of `batch_sizes(runner.rows)` over rows 0..b-1, each row
    prefilled with `prompt_ids` once (a larger batch prefills only its new rows; its steps overwrite the
    positions the smaller one decoded); {batches, decode_steps, seconds}. Nothing is sampled: each step
    feeds the prompt's first id again (any valid id does)."""
    if tokens <= 0:
        return {"batches": [], "decode_steps": 0, "seconds": 0.0}
    ids = list(prompt_ids[: max(1, runner.max_len - tokens - 1)]) or [0]
    t0 = time.perf_counter()
    steps = 0
    sizes = batch_sizes(runner.rows)
    filled = 0
    for n in sizes:
        for row in range(filled, n):
            runner.prefill(row, ids)
        filled = n
        positions = [len(ids)] * n
        for _ in range(tokens):
            runner.decode(ids[:1] * n, positions)
            positions = [p + 1 for p in positions]
            steps += 1
        runner.after_step()
    return {"batches": sizes, "decode_steps": steps, "seconds": time.perf_counter() - t0}
