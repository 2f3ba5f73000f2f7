"""Which decode step runs: the step's shape (rows and KV positions rounded up to powers of two, and the
padding rows that rounding adds), whether steps can be streamed at all (`can_stream`), and, where they
can, streamed or segmented.

A streamed step's miss crosses PCIe twice (read by the kernels, then filled in behind the step); with many
misses that costs more than the host's decisions of a segmented step. So the runner streams while the
recent steps missed fewer than `limit` bytes of experts, segments above it, and streams again below half
of it (`StreamChoice`); `MissedBytes` measures those bytes from the cache's counters.

Imports `engine.api`, `engine.experts`, `engine.kernels` and `engine.model` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine.api.stats import CacheCounters
from engine.experts.cache import ExpertCache
from engine.experts.pinned import device_readable
from engine.kernels.grouped_experts import GroupedExperts
from engine.model.loader import OffloadedModel

log = logging.getLogger(__name__)


def bucket(n: int, smallest: int, largest: int) -> int:
    """The power-of-two step size (from `smallest`, at most `largest`) that `n` rounds up to."""
    b = smallest
    while b < n:
        b *= 2
    return min(b, largest)


def pads(batch: int, rows: int) -> bool:
    """Whether a decode step of `batch` rows can run fewer real rows (n < batch with the same bucket)."""
    return batch > 1 and bucket(batch - 1, 1, rows) == batch


def row_sources(n: int, batch: int) -> list[int]:
    """Row b's routing source in a step of `n` real rows padded to `batch`: itself, or row 0 for padding."""
    return list(range(n)) + [0] * (batch - n)


def can_stream(om: OffloadedModel, grouped: Callable[[], GroupedExperts]) -> bool:
    """Whether `om`'s decode steps can be streamed (the runner allowing it): the expert store is mapped
    into the GPU's address space and every MoE layer's experts run the fused kernels."""
    store = om.store
    if not all(device_readable(store.row(lay.index, 0)) for lay in om.layers):
        log.info("decode steps are not streamed: the expert store is not mapped into the GPU's address space")
        return False
    g = grouped()
    odd = {type(lay.experts).__name__ for lay in om.layers if not g.reads_host(lay.experts)}
    if odd:
        log.info("decode steps are not streamed: %s experts do not run the fused kernels", ", ".join(odd))
        return False
    return True


class StreamChoice:
    """Streamed or segmented decode steps, from the expert bytes recent steps missed: a moving average
    (weight 0.2 on the newest step), segmented above `limit` bytes per step, streamed again below half."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.miss_bytes = 0.0
        self.streaming = True

    def update(self, missed_bytes: float) -> bool:
        """Account one step's missed bytes; True if the next step should be streamed."""
        self.miss_bytes = 0.8 * self.miss_bytes + 0.2 * missed_bytes
        if self.streaming and self.miss_bytes > self.limit:
            self.streaming = False
        elif not self.streaming and self.miss_bytes < self.limit / 2:
            self.streaming = True
        return self.streaming


def missed(counters: CacheCounters) -> int:
    """Routed experts the cache did not hold before their step's own prefetch (misses + prefetch hits)."""
    return sum(counters.misses) + sum(counters.hits_prefetched)


class MissedBytes:
    """The choice between streamed and segmented steps, fed with the experts missed since last asked."""

    def __init__(self, limit: int | None) -> None:
        self.choice = StreamChoice(limit or 0)
        self.seen = 0  # the cache's missed-expert count when last looked at

    def restart(self, limit: int | None) -> None:
        """A fresh choice (the captured graphs were forgotten); the missed count seen is kept."""
        self.choice = StreamChoice(limit or 0)

    def look(self, cache: ExpertCache) -> None:
        """Forget what was missed up to now (a prefill's loads say nothing about decode steps)."""
        self.seen = missed(cache.counters)

    def stream(self, cache: ExpertCache, need: int, limit: int | None) -> bool:
        """Whether the next step (`need` experts per layer at most) is streamed, given `limit` bytes."""
        if limit is None or cache.capacity < need:
            return True  # a segmented step needs room for a layer's experts at once
        now = missed(cache.counters)
        self.choice.limit = limit
        stream = self.choice.update((now - self.seen) * cache.layout.nbytes)
        self.seen = now
        return stream
