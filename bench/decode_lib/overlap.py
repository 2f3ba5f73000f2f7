"""A profiler trace of a few decode steps at a 50% cache: how much host->device copy time ran while
compute kernels ran (`none` and `exact`). CUDA only.

Imports torch's profiler, `bench.common`, `bench.trace_gaps`, `engine.api`, `engine.model.loader` and `engine.prefetch` only.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from bench.decode_lib.record import log
from bench.decode_lib.timing import Workload, sync
from bench.decode_lib.training import Bank
from engine.api.config import EngineConfig
from engine.model.loader import CacheBudget, replace_cache
from engine.prefetch.build import build_prefetcher


def profile_overlap(workload: Workload, work: Path, tag: str, keep: Path | None = None) -> dict:
    """Profile a few decode steps on the workload's runner as it is configured (cache, prefetcher, step
    kind): how much host->device copy time overlapped compute kernels, how long the GPU sat idle and the
    host in synchronising calls (`bench.common.chrome_trace_overlap`), why the copy engine sat idle
    (`bench.trace_gaps.copy_gaps`, under `copy_gaps`), and those per step. `keep`: the trace is also
    kept there, gzipped (`profile_<tag>.json.gz`)."""
    from torch.profiler import ProfilerActivity, profile

    from bench.common import chrome_trace_overlap as overlap
    from bench.trace_gaps import copy_gaps

    runner = workload.runner
    prompt, feed = workload.segments[-1]
    runner.prefill(0, prompt)
    pos = len(prompt)
    for tok in feed[:3]:
        runner.decode([tok], [pos])
        pos += 1
    sync(workload.device)
    steps = feed[3:9]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if workload.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for tok in steps:
            runner.decode([tok], [pos])
            pos += 1
        sync(workload.device)
    runner.after_step()
    path = work / f"profile_{tag}.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    res = overlap(trace)
    res["decode_steps"] = n = max(1, len(steps))
    for key in ("gpu_idle_ms", "host_sync_ms", "copy_ms", "compute_busy_ms", "gpu_span_ms"):
        res[f"{key.removesuffix('_ms')}_ms_per_step"] = res[key] / n
    gaps = copy_gaps(trace)
    res["copy_gaps"] = gaps
    res["copy_gaps_per_step"] = {k: v / n for k, v in gaps.items() if k.endswith("_ms")}
    if keep is not None:  # tens of MB as JSON, a few gzipped
        keep.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as src, gzip.open(keep / f"{path.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    path.unlink()
    return res


def overlap_by_policy(workload: Workload, bank: Bank, work: Path) -> dict:
    """{policy: overlap} for `none` and `exact` at a 50% cache, on the workload's runner."""
    om, runner = workload.runner.om, workload.runner
    out = {}
    for policy in ("none", "exact"):
        replace_cache(om, CacheBudget(fraction=0.5))
        pf = build_prefetcher(om, EngineConfig(policy=policy), bank=bank.bank, manifest=bank.manifest)
        runner.invalidate()
        try:
            out[policy] = profile_overlap(workload, work, policy)
        finally:
            if pf is not None:
                pf.remove()
            runner.invalidate()
        log(f"overlap {policy} @ 50%: {json.dumps(out[policy])}")
    return out
