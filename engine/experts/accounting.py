"""The cache's counters for routed layer-steps, and the prefetch pins a layer's routing settles.

A layer's prediction pins its experts until the layer's routing is known (`pending`); a prefetched
expert not used yet is `fresh`. Three entry points account a layer-step, one for each way a step can
run: `account_routing` (the host looks the experts up before they compute, then `acquire` classifies
them, and `count_host` counts the misses computed on the host), `count_resident` (a whole-step graph found every expert resident), and `stream_account` (a
streamed step ran; some experts were read from host memory). `unwind` is the one way prediction pins
are let go.

Imports `engine.api.stats` and `engine.experts.slots` only; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.api.stats import CacheCounters
from engine.experts.slots import HIT, PREFETCH_HIT, Key, SlotPool


class Accounting:
    def __init__(self, slots: SlotPool, counters: CacheCounters, num_layers: int, expert_nbytes: int) -> None:
        self.slots = slots
        self.counters = counters
        self.nbytes = expert_nbytes
        self.pending: list[set[Key]] = [set() for _ in range(num_layers)]  # predicted, pinned for routing
        self.fresh: set[Key] = set()  # brought by a prefetch, not used yet

    def unwind(self, layer: int, keep: set[Key] | frozenset = frozenset(), wasted: bool = True) -> None:
        """Unpin `layer`'s predicted experts except those in `keep`; with `wasted`, a prefetched one never
        used counts as wasted (else it keeps its prefetch-hit status)."""
        pf = self.pending[layer]
        for key in list(pf):
            if key in keep:
                continue
            pf.discard(key)
            self.slots.unpin(self.slots.slot_of[key])
            if wasted and key in self.fresh:
                self.fresh.discard(key)
                self.counters.prefetch_wasted[layer] += 1

    def evicted(self, key: Key) -> None:
        if key in self.fresh:  # a prefetched expert evicted before any use
            self.fresh.discard(key)
            self.counters.prefetch_wasted[key[0]] += 1

    def hit(self, key: Key) -> str:
        """Count a routed expert found in its slot: a prefetch hit on the first use of a prefetched expert,
        else a resident hit; it becomes the most recently used."""
        c, layer = self.counters, key[0]
        self.slots.touch(key)
        if key in self.fresh:
            self.fresh.discard(key)
            c.hits_prefetched[layer] += 1
            c.prefetch_used[layer] += 1
            return PREFETCH_HIT
        c.hits_resident[layer] += 1
        return HIT

    def account_routing(self, layer: int, routed: Sequence[int]) -> None:
        """Score the prediction; predicted experts that were not routed are unpinned (wasted if copied)."""
        pf = self.pending[layer]
        c = self.counters
        routed_keys = {(layer, int(e)) for e in routed}
        if pf:
            c.routed_scored[layer] += len(routed_keys)
            c.predicted_routed[layer] += len(routed_keys & pf)
        self.unwind(layer, keep=routed_keys)

    def count_resident(self, layer: int, routed: Sequence[int]) -> None:
        """Requests and resident hits of a layer-step that used its experts straight from the device."""
        c = self.counters
        c.requests[layer] += len(routed)
        c.hits_resident[layer] += len(routed)
        for e in routed:
            self.slots.touch((layer, int(e)))

    def count_host(self, layer: int, experts: Sequence[int]) -> None:
        """Routed experts that missed and were computed on the host (hybrid misses): requests and misses,
        no bytes copied; each counts a use for the eviction order, as a copied miss does."""
        c = self.counters
        c.requests[layer] += len(experts)
        c.misses[layer] += len(experts)
        c.host_computed[layer] += len(experts)
        for e in experts:
            self.slots.use((layer, int(e)))

    def stream_account(
        self, layer: int, routed: Sequence[int], slots_seen: Sequence[int], predicted: set[int] | None
    ) -> list[int]:
        """Hits, misses and the prediction's score of one layer of a streamed step; returns the misses."""
        c = self.counters
        misses = []
        for e, slot in zip(routed, slots_seen, strict=True):
            key = (layer, int(e))
            if slot < 0:
                c.misses[layer] += 1
                misses.append(int(e))
                self.slots.use(key)
            elif key in self.slots:  # found in its slot (and not evicted since)
                self.hit(key)
            else:
                c.hits_resident[layer] += 1
                self.slots.use(key)
        c.requests[layer] += len(routed)
        c.bytes_host_read += len(misses) * self.nbytes
        if predicted is not None:
            c.routed_scored[layer] += len(routed)
            c.predicted_routed[layer] += sum(1 for e in routed if int(e) in predicted)
        return misses
