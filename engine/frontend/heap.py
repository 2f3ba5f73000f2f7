"""The Python heap after start-up: collected once, then frozen out of the garbage collector's full passes.

A full (generation 2) collection walks every container object the process holds. A loaded engine holds
hundreds of thousands of them (modules, parameters, the tokenizer's tables, the prefetcher's graphs), so a
full pass that starts inside a decode step stops the engine thread for as long as the walk takes, with no
CUDA call to show for it (the H200 profiles of stop 38 saw 230-260 ms host gaps of that kind, once in a few
hundred steps). `freeze_heap()` collects what start-up left behind, then moves every surviving object into
the permanent generation (`gc.freeze`), so later passes walk only what serving allocates. `AsyncEngine.start`
freezes once the model is loaded; `shutdown` thaws (`thaw_heap`), so an engine torn down in a longer-lived
process (the tests) leaves nothing the collector can no longer reach.

Imports the standard library only.
"""

from __future__ import annotations

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
