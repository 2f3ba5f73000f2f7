"""The slot-expert kernels' autotuner: the block configurations tried, and the fastest one per shape,
timed once on the GPU with CUDA events.

Imports torch only.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# (BLOCK_N, BLOCK_K, num_warps) tried on first use of a shape; the fastest is kept (see `_tuned`)
CONFIGS = ((16, 256, 4), (32, 128, 4), (32, 256, 8), (64, 128, 8), (8, 512, 4), (8, 256, 4), (16, 512, 8))
# the down projection also picks its strategy: "fused" (one kernel, programs per token) or "split" (a
# kernel per pair, then the weighted sum): the first saves a launch, the second fills the GPU at batch 1
DOWN_CONFIGS = tuple(("fused", *c) for c in CONFIGS) + tuple(("split", *c) for c in CONFIGS)
_best: dict[tuple, tuple] = {}


def gpu_time_ms(run, reps: int = 10) -> float:
    """GPU time of `reps` calls of `run` (CUDA events), not the host's launch time: a sleep kernel first
    holds the stream while the launches queue up behind it, so the kernels then run back to back."""
    run()  # compile and warm
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(10_000_000)  # ~5 ms: longer than the host needs to queue the launches
    a.record()
    for _ in range(reps):
        run()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def _tuned(key: tuple, run, configs: tuple = CONFIGS) -> tuple:
    """The fastest config for this shape, timed once on the GPU. The choice holds for the whole process,
    because configurations sum in different orders and so round differently: one shape must compute the
    same sums in every step, cache size and policy, or greedy tokens could flip at a near tie. A decode
    step is run eagerly, which tunes it, before it is captured; a shape first met inside a graph capture
    (nothing can be timed there) is fixed to the first config, for good."""
    cfg = _best.get(key)
    if cfg is not None:
        return cfg
    if not torch.cuda.is_available():
        return configs[0]
    if torch.cuda.is_current_stream_capturing():
        _best[key] = configs[0]
        log.warning("slot GEMV %s first met inside a graph capture: fixed to %s, untimed", key, configs[0])
        return configs[0]
    times = [(gpu_time_ms(lambda c=c: run(c)), c) for c in configs]
    cfg = _best[key] = min(times)[1]
    log.debug("slot GEMV %s: %s (%s)", key, cfg, times)
    return cfg
