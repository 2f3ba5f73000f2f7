"""Where the host's time inside segmented decode steps goes (`HostClock`): the replayer adds each phase's
wall time to it, layer by layer, so a bench can say which part of the host's work the copy engine waits
for (docs/performance.md, "Where a segmented step waits").

The phases, in the order a routed layer meets them:
- `launch`: replaying a segment's graph (one `cudaGraphLaunch`);
- `read_copy`: recording the event after a segment (whose own last node copied the routed ids out), and
  with hybrid misses queueing the copies of the layer's input and weights;
- `predict_wait`: waiting for a prediction's id table to reach the host;
- `predict_issue`: turning it into copies (`Prefetcher.issue_captured`: the union of its rows, the
  cache's `prefetch`, the copies' launches);
- `route_wait`: waiting for the routed ids to reach the host (the GPU finishing the segment: mostly
  the attention and the router, or the copies of the layer before);
- `route_read`: reading them (the distinct ids of the step's rows) and asking the cache whether the
  device can go on alone (`ready_on_device`);
- `route`: the cache's bookkeeping of a routed layer (`account_routing`, `acquire` with its demand
  copies, the slot-table row's upload; hybrid layers also the host's share of the misses);
- `release`: unpinning the last routed layer's experts.

Timing costs two `perf_counter` calls a phase (about 0.1 µs each): always on, so a server exports the
totals (`moe_segmented_host_seconds_total`). Imports `engine.api.stats` (the phases' names) only.
"""

from __future__ import annotations

import time

from engine.api.stats import HOST_PHASES

PHASES = HOST_PHASES  # (the names live in `engine.api.stats`, which the metrics read too)


class HostClock:
    """Seconds per phase, summed over the segmented steps replayed since the last `reset`."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    def lap(self, phase: str, since: float) -> float:
        """Add the time from `since` to now to `phase`; returns now (the next phase's start)."""
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    def snapshot(self) -> dict:
        """{"steps": n, "ms": {phase: total ms}} since the last reset."""
        return {"steps": self.steps, "ms": {k: 1e3 * v for k, v in self.seconds.items()}}
