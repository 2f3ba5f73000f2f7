"""The Python heap after start-up: collected once, then frozen out of the garbage collector's full passes.

A full (generation 2) collection walks every container object the process holds. A loaded engine holds
hundreds of thousands of them (modules, parameters, the tokenizer's tables, the prefetcher's graphs), so a
full pass that starts inside a decode step stops the engine thread for as long as the walk takes, with no
CUDA call to show for it (the H200 profiles of stop 38 saw 230-260 ms host gaps of that kind, once in a few
hundred steps). `freeze_heap()` collects what start-up left behind, then moves every surviving object into
the permanent generation (`gc.freeze`), so later passes walk only what serving allocates. `AsyncEngine.start`
freezes once the model is loaded; `shutdown` thaws (`thaw_heap`), so an engine torn down in a longer-lived
process (the tests) leaves nothing the collector can no longer reach. `GCWatch` reports every pass's
generation and duration while it is installed (`moe_gc_pause_seconds`).

Imports the standard library only.
"""

from __future__ import annotations

import bisect
import gc
import time


def freeze_heap() -> dict:
    """Collect, then freeze every object left; returns the objects frozen and the collection's seconds."""
    t0 = time.perf_counter()
    gc.collect()
    seconds = time.perf_counter() - t0
    gc.freeze()
    return {"frozen": gc.get_freeze_count(), "collect_s": seconds}


def thaw_heap() -> None:
    """Give the frozen objects back to the collector (`gc.unfreeze`)."""
    gc.unfreeze()


class GCWatch:
    """Counts every garbage-collector pass while installed: per generation, one count per bucket of
    `buckets` (seconds; the last count is over the largest bound) and the summed seconds. The callback only
    adds to plain lists; `passes()` is what a scrape reads (`Metrics.attach_gc`)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._counts = {g: [0] * (len(buckets) + 1) for g in range(3)}
        self._sums = dict.fromkeys(range(3), 0.0)
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        seconds = time.perf_counter() - self._t0
        gen = int(info.get("generation", 2))
        self._counts[gen][bisect.bisect_left(self.buckets, seconds)] += 1
        self._sums[gen] += seconds

    def passes(self) -> dict[int, tuple[list[int], float]]:
        return {g: (list(c), self._sums[g]) for g, c in self._counts.items()}

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
