"""A host-only model of `engine.experts.cache.ExpertCache`: the same slots, pins, prefetch and counters, no
weights, with a pluggable eviction order (`predictors.eviction`).

What is mirrored, method by method (the engine's eager/segmented path, which every CPU run and every
non-streamed GPU step takes):

- one pool of `capacity` slots shared by every MoE layer, keyed (layer, expert); a free slot is used
  first, then the order's victim among the unpinned residents (`_take_slot`);
- `prefetch(layer, ids, limit)`: drops the layer's earlier unconsumed prediction (wasted if it was
  copied), then best first: a resident expert is pinned and touched, a missing one gets a slot, a copy
  (`prefetch_issued`, bytes) and the "fresh" mark; stops at `limit` or when every slot is pinned;
- `account_routing(layer, routed)`: scores the prediction (`routed_scored`, `predicted_routed`), unpins
  predicted experts that were not routed, counting the copied ones as wasted;
- `acquire(layer, ids)` + `release`: resident hit, prefetch hit (first use of a fresh expert: also
  `prefetch_used`) or miss (a slot and a demand copy); the prefetch pin becomes the step pin;
- `route(layer, experts)`: what `engine.model.offload.offloaded_experts_forward` does with a layer-step's routed
  set: one acquire when it fits in `room_for(layer)`, else the engine's chunks (`unpin_prediction`, chunks
  of the free room; with `lookahead`, as on CUDA, half-room chunks with the next acquired before the
  current is released).

Counters are the engine's own `engine.api.stats.CacheCounters`, so a simulation and an engine run compare
field by field. The clock (`now`) ticks once per layer-step; the eviction order sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.api.stats import CacheCounters
from predictors.eviction import Key


class SimCacheFull(RuntimeError):
    """Every slot is pinned (the engine raises `CacheFull` in the same place)."""


class SimCache:
    def __init__(self, capacity: int, num_layers: int, order, lookahead: bool = False) -> None:
        if capacity < 1:
            raise ValueError("the expert cache needs at least one slot")
        self.capacity = capacity
        self.order = order
        self.lookahead = lookahead
        self.counters = CacheCounters(num_layers)
        self.counters.slots_capacity = capacity
        self.now = 0
        self._resident: set[Key] = set()
        self._pins: dict[Key, int] = {}  # pinned keys only (a key leaves at its last unpin): `room_for`
        # asks how many every route, so the count is its length, not a scan
        self._fresh: set[Key] = set()
        self._prefetch: list[set[Key]] = [set() for _ in range(num_layers)]

    # ---------------------------------------------------------------- internals
    def _pinned(self, key: Key) -> bool:
        return self._pins.get(key, 0) > 0

    def pinned_slots(self) -> int:
        return len(self._pins)

    def _take_slot(self) -> bool:
        if len(self._resident) < self.capacity:
            return True
        victim = self.order.victim(self._pinned)
        if victim is None:
            return False
        self._evict(victim)
        return True

    def _evict(self, key: Key) -> None:
        self._resident.discard(key)
        self.order.remove(key)
        self._pins.pop(key, None)  # (a victim is never pinned)
        if key in self._fresh:
            self._fresh.discard(key)
            self.counters.prefetch_wasted[key[0]] += 1
        self.counters.slots_used -= 1

    def _install(self, key: Key) -> None:
        self._resident.add(key)
        self.order.insert(key, self.now)
        self.counters.slots_used += 1

    def _pin(self, key: Key) -> None:
        self._pins[key] = self._pins.get(key, 0) + 1

    def _unpin(self, key: Key) -> None:
        n = self._pins.get(key, 0)
        if n <= 0:
            raise RuntimeError(f"simulated cache: {key} unpinned more often than pinned")
        if n == 1:
            del self._pins[key]
        else:
            self._pins[key] = n - 1

    def preload(self, keys: Sequence[Key]) -> None:
        """Initial content (the server's `load_all` when every expert fits): not counted as copies."""
        for key in keys:
            if key not in self._resident and len(self._resident) < self.capacity:
                self._install(key)

    # ---------------------------------------------------------------- prefetch
    def prefetch(self, layer: int, ids: Sequence[int], limit: int | None = None) -> int:
        self._drop_prefetch(layer)
        pf = self._prefetch[layer]
        issued = 0
        for e in ids:
            if limit is not None and len(pf) >= limit:
                break
            key = (layer, int(e))
            if key in pf:
                continue
            if key not in self._resident:
                if not self._take_slot():
                    break
                self._install(key)
                self._fresh.add(key)
                issued += 1
            else:
                self.order.touch(key, self.now, routed=False)
            self._pin(key)
            pf.add(key)
        self.counters.prefetch_issued[layer] += issued
        return issued

    def _drop_prefetch(self, layer: int) -> None:
        pf = self._prefetch[layer]
        for key in pf:
            self._unpin(key)
            if key in self._fresh:
                self._fresh.discard(key)
                self.counters.prefetch_wasted[layer] += 1
        pf.clear()

    def room_for(self, layer: int) -> int:
        return self.capacity - self.pinned_slots() + len(self._prefetch[layer])

    def unpin_prediction(self, layer: int) -> None:
        pf = self._prefetch[layer]
        for key in pf:
            self._unpin(key)
        pf.clear()

    def account_routing(self, layer: int, routed: Sequence[int]) -> None:
        pf = self._prefetch[layer]
        c = self.counters
        routed_keys = {(layer, int(e)) for e in routed}
        if pf:
            c.routed_scored[layer] += len(routed_keys)
            c.predicted_routed[layer] += len(routed_keys & pf)
        for key in list(pf):
            if key not in routed_keys:
                pf.discard(key)
                self._unpin(key)
                if key in self._fresh:
                    self._fresh.discard(key)
                    c.prefetch_wasted[layer] += 1

    # ---------------------------------------------------------------- acquire / release
    def acquire(self, layer: int, ids: Sequence[int]) -> list[Key]:
        c = self.counters
        pf = self._prefetch[layer]
        taken: list[Key] = []
        for e in ids:
            key = (layer, int(e))
            if key not in self._resident:
                if not self._take_slot():
                    for k in taken:
                        self._unpin(k)
                    raise SimCacheFull(f"{len(ids)} experts asked at once, {self.capacity} slots")
                self._install(key)
                c.misses[layer] += 1
            elif key in self._fresh:
                self._fresh.discard(key)
                c.hits_prefetched[layer] += 1
                c.prefetch_used[layer] += 1
            else:
                c.hits_resident[layer] += 1
            self.order.touch(key, self.now, routed=True)
            if key in pf:
                pf.discard(key)
            else:
                self._pin(key)
            taken.append(key)
        c.requests[layer] += len(ids)
        return taken

    def release(self, keys: list[Key]) -> None:
        for key in keys:
            self._unpin(key)

    def route(self, layer: int, experts: Sequence[int]) -> None:
        """A layer-step's routed experts (sorted, distinct), as `offloaded_experts_forward` handles them."""
        self.account_routing(layer, experts)
        if not experts:
            return
        if len(experts) <= self.room_for(layer):
            self.release(self.acquire(layer, experts))
            return
        self.unpin_prediction(layer)
        room = max(1, self.capacity - self.pinned_slots())
        lookahead = self.lookahead and room >= 2
        size = room // 2 if lookahead else room
        chunks = [experts[i : i + size] for i in range(0, len(experts), size)]
        cur = self.acquire(layer, chunks[0])
        for i in range(len(chunks)):
            nxt = self.acquire(layer, chunks[i + 1]) if lookahead and i + 1 < len(chunks) else None
            self.release(cur)
            if i + 1 < len(chunks):
                cur = nxt if nxt is not None else self.acquire(layer, chunks[i + 1])
