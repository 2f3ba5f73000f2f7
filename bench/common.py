"""Helpers the GPU benchmarks share: the machine's name, pinned-copy bandwidth, profiler-trace overlap."""

from __future__ import annotations

import bisect
import statistics

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def pinned_bandwidth(nbytes: int, reps: int = 10) -> dict:
    """Host->device bandwidth of one large copy from pinned memory (median of `reps`, CUDA events)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dev.copy_(host, non_blocking=True)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    t = statistics.median(times)
    return {"bytes": nbytes, "median_s": t, "gb_per_s": nbytes / t / 1e9}


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(merged: list[tuple[float, float]], starts: list[float], a: float, b: float) -> float:
    """Length of [a, b] covered by the disjoint sorted intervals `merged`."""
    i = max(0, bisect.bisect_right(starts, a) - 1)
    total = 0.0
    while i < len(merged) and merged[i][0] < b:
        lo, hi = max(a, merged[i][0]), min(b, merged[i][1])
        if hi > lo:
            total += hi - lo
        i += 1
    return total


def chrome_trace_overlap(trace: dict) -> dict:
    """From a torch.profiler Chrome trace: host->device copy time, and how much of it ran while a
    compute kernel was running (any stream). Times in ms."""
    kernels, copies = [], []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        cat, name = ev.get("cat", ""), ev.get("name", "")
        span = (float(ev["ts"]), float(ev["ts"]) + float(ev["dur"]))
        if cat == "kernel":
            kernels.append(span)
        elif cat == "gpu_memcpy" and "HtoD" in name:
            copies.append(span)
    merged = _merge(kernels)
    starts = [a for a, _ in merged]
    copy_us = sum(b - a for a, b in copies)
    overlapped_us = sum(_covered(merged, starts, a, b) for a, b in copies)
    everything = [s for s in kernels + copies]
    span_us = (max(b for _, b in everything) - min(a for a, _ in everything)) if everything else 0.0
    return {
        "copies": len(copies),
        "copy_ms": copy_us / 1e3,
        "copy_concurrent_with_compute_ms": overlapped_us / 1e3,
        "overlap_share": overlapped_us / copy_us if copy_us else None,
        "kernels": len(kernels),
        "compute_busy_ms": sum(b - a for a, b in merged) / 1e3,
        "gpu_span_ms": span_us / 1e3,
    }
