"""The fill queue of streamed decode steps: experts a streamed step missed or predicted, waiting for the
next `ExpertCache.stream_publish` to give them slots and start their copies, and how many of them one
publish may start.

Streamed steps (`engine.runner.graphs`: one captured graph per step at any cache size, missing experts
read from host memory by the kernels) never wait for the host. The host accounts each step after it ran
(`ExpertCache.stream_account`), queues the missed and predicted experts here and, before the next step
is launched, the publish makes the copies that landed visible in the device table, evicts for the queued
experts (their entries become -1 in the same table upload), and starts their copies behind an event
recorded after that upload: every step that could still read an evicted slot was launched before it.
An expert's table entry stays -1 until its copy has landed, so a step sees either a complete slot or
the host copy, never a slot being written.

Imports `engine.experts.slots` only; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.experts.slots import Key, SlotPool


class FillQueue:
    def __init__(self) -> None:
        self.queued: dict[Key, bool] = {}  # streamed fills to start at the next publish (True: prefetch)

    def add(self, slots: SlotPool, layer: int, ids: Sequence[int], prefetch: bool) -> None:
        """Queue `layer`'s experts `ids` that are neither resident (landing included) nor queued already."""
        for e in ids:
            key = (layer, int(e))
            if key not in slots and key not in self.queued:
                self.queued[key] = prefetch

    def drain(self) -> list[tuple[Key, bool]]:
        """The queued experts in order (misses were queued before predictions); the queue is empty after."""
        items = list(self.queued.items())
        self.queued.clear()
        return items


def fill_budget(capacity: int, expert_nbytes: int, landing: int, max_inflight_bytes: int | None) -> int:
    """How many fills one publish may start: as many as keep the copies in flight under
    `max_inflight_bytes` (at least one when none is in flight), else up to the cache's size."""
    if max_inflight_bytes is None:
        return capacity
    return max(0 if landing else 1, max_inflight_bytes // expert_nbytes - landing)
