"""Why the copy engine sits idle, from a torch.profiler Chrome trace of decode steps (issue #17).

At a 50% cache the expert copies set the pace, so every microsecond the copy engine does nothing inside the
profiled span is a microsecond the step could have been shorter. Each expert copy (a host->device copy of
at least `min_bytes`) is matched to the runtime call that issued it (the trace's correlation ids), and the
idle time before it, since the previous expert copy ended, is split in two:
- `host_late`: no copy had been issued yet; the host was elsewhere. The part of it the host spent in a
  synchronising call (waiting for the GPU: a routing read, an event wait) is `host_late_in_sync`; the rest
  is the host's own work (Python, launches).
- `dependency`: the copy had been issued but waited on the GPU: for an event (a staging row to be decoded,
  a slot's last reader, a table upload) or for its stream's earlier work.
The compute stream's own idle time inside the span is given too, split by whether the copy engine was busy
then (compute waiting on copies: the stalls) or not (both idle).

`copy_gaps(trace)` returns totals in ms; `bench.decode_lib.overlap` adds them to every profile.

Imports `bench.common` only.
"""

from __future__ import annotations

from bench.common import _covered, _merge


def _sync_call(name: str) -> bool:
    """A runtime call in which the host waits for the GPU (a stream, event or device synchronisation, or a
    synchronous copy)."""
    return "Synchronize" in name or name == "cudaMemcpy"


def _spans(trace: dict, min_bytes: int):
    issued: dict[int, float] = {}
    calls: list[tuple[float, float, str]] = []
    copies: list[tuple[float, float, int]] = []  # (start, end, correlation)
    kernels: list[tuple[float, float]] = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        cat, name, args = ev.get("cat", ""), ev.get("name", ""), ev.get("args") or {}
        a = float(ev["ts"])
        b = a + float(ev["dur"])
        if cat == "cuda_runtime":
            if "correlation" in args:
                issued[int(args["correlation"])] = a
            calls.append((a, b, name))
        elif cat == "gpu_memcpy" and "HtoD" in name and int(args.get("bytes", 0)) >= min_bytes:
            copies.append((a, b, int(args.get("correlation", -1))))
        elif cat == "kernel":
            kernels.append((a, b))
    return issued, calls, sorted(copies), kernels


def _gaps(spans: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """[lo, hi] minus the merged `spans`."""
    out, cur = [], lo
    for a, b in _merge(spans):
        if b <= cur or a >= hi:
            continue
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
    if cur < hi:
        out.append((cur, hi))
    return out


def copy_gaps(trace: dict, min_bytes: int = 1 << 20, top: int = 5) -> dict:
    """The copy engine's idle time inside the span of the trace's expert copies, split into time before
    the host issued the next copy (`host_late_ms`, of it `host_late_in_sync_ms` in synchronising calls, and
    the runtime calls that took most of it, `host_late_calls`) and time an issued copy waited on the GPU
    (`dependency_ms`); the compute kernels' idle time in that span split by whether a copy ran then. Times
    in ms; `copies` is the number of expert copies."""
    issued, calls, copies, kernels = _spans(trace, min_bytes)
    out = {
        "copies": len(copies),
        "span_ms": 0.0,
        "copy_busy_ms": 0.0,
        "host_late_ms": 0.0,
        "host_late_in_sync_ms": 0.0,
        "host_late_calls": {},
        "dependency_ms": 0.0,
        "compute_idle_copying_ms": 0.0,
        "compute_idle_no_copy_ms": 0.0,
    }
    if not copies:
        return out
    syncs = _merge([(a, b) for a, b, n in calls if _sync_call(n)])
    sync_starts = [a for a, _ in syncs]
    late_spans: list[tuple[float, float]] = []
    dep = 0.0
    prev_end = copies[0][1]
    for a, b, corr in copies[1:]:
        if a > prev_end:
            issue = min(issued.get(corr, prev_end), a)  # an unmatched copy: its whole gap is dependency
            if issue > prev_end:
                late_spans.append((prev_end, issue))
            dep += a - max(prev_end, issue)
        prev_end = max(prev_end, b)
    late_starts = [a for a, _ in late_spans]
    by_call: dict[str, float] = {}
    for a, b, name in calls:
        t = _covered(late_spans, late_starts, a, b)
        if t > 0:
            by_call[name] = by_call.get(name, 0.0) + t
    lo, hi = copies[0][0], max(b for _, b, _ in copies)
    busy = _merge([(a, b) for a, b, _ in copies])
    busy_starts = [a for a, _ in busy]
    idle = _gaps(kernels, lo, hi)
    copying = sum(_covered(busy, busy_starts, a, b) for a, b in idle)
    out.update(
        span_ms=(hi - lo) / 1e3,
        copy_busy_ms=sum(b - a for a, b in busy) / 1e3,
        host_late_ms=sum(b - a for a, b in late_spans) / 1e3,
        host_late_in_sync_ms=sum(_covered(syncs, sync_starts, a, b) for a, b in late_spans) / 1e3,
        host_late_calls={
            n: round(t / 1e3, 3) for n, t in sorted(by_call.items(), key=lambda kv: -kv[1])[:top]
        },
        dependency_ms=dep / 1e3,
        compute_idle_copying_ms=copying / 1e3,
        compute_idle_no_copy_ms=(sum(b - a for a, b in idle) - copying) / 1e3,
    )
    return out
