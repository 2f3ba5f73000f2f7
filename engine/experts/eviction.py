"""Eviction orders of the expert cache (`MOE_EVICTION`): which unpinned resident expert gives up its slot.

An order only ranks the residents; `engine.experts.slots.SlotPool` owns the slots and pins and asks the
order for a victim among the unpinned residents. Keys are (moe layer, expert id), one pool over all layers.
The cache's clock (`now`) ticks once per layer-step, so a token is `num_layers` ticks.

- `lru`: least recently touched first (an OrderedDict). A prefetch of a resident expert touches it.
- `lfu`: the smallest exponentially decayed count of routed uses: a use at tick t adds 2^(t / half_life),
  so a use `half_life` ticks ago weighs half a use now (half_life 0 or inf: plain counts). Counts outlive
  eviction (an expert that comes back keeps its history), a routed use of an expert read from host memory
  counts too (`use`), prefetches do not count. Ties go to the least recently touched.

`predictors.eviction` adds the offline orders the simulator uses (`predicted`, `belady`) on `HeapOrder`.
Pure Python, torch-free, imports `engine.api.policies` (the names) only. Every order is a lazy-deletion
heap (or an OrderedDict), so a victim costs O(log n) plus the pinned and stale entries it meets.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable

from engine.api.policies import DEFAULT_LFU_HALF_LIFE, EVICTIONS

Key = tuple[int, int]  # (moe layer index, expert id)
__all__ = ["DEFAULT_LFU_HALF_LIFE", "EVICTIONS", "LFU", "LRU", "HeapOrder", "Key", "build_eviction"]


class LRU:
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Key, None] = OrderedDict()  # oldest first

    def insert(self, key: Key, now: int) -> None:
        self._order[key] = None

    def touch(self, key: Key, now: int, routed: bool) -> None:
        self._order.move_to_end(key)

    def remove(self, key: Key) -> None:
        del self._order[key]

    def use(self, key: Key, now: int) -> None:
        """A routed use of an expert that is not resident (a streamed step read it from host memory)."""

    def victim(self, pinned: Callable[[Key], bool]) -> Key | None:
        for key in self._order:  # oldest first
            if not pinned(key):
                return key
        return None

    def keys(self) -> list[Key]:
        """The residents, next victim first."""
        return list(self._order)


class HeapOrder:
    """Residents ranked by a priority (smallest evicted first), ties to the least recently touched.

    `monotone`: a resident's (priority, tie) never goes down while it stays (LFU's counts only grow), so a
    touch only updates its entry, and `victim` re-pushes the resident's heap entry with the current one
    when it meets it stale at the top: the same victims as pushing on every touch, with one live heap
    entry per resident (entries from before a resident's insert are dropped when met)."""

    monotone = False

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._entry: dict[Key, tuple[float, int]] = {}  # the valid heap entry of each resident
        self._born: dict[Key, int] = {}  # the tie of each resident's insert
        self._seq = 0

    def _priority(self, key: Key) -> float:
        raise NotImplementedError

    def _tie(self, key: Key) -> int:
        """The tie-break of a new heap entry: the push order (each push is a touch or an insert)."""
        self._seq += 1
        return self._seq

    def _push(self, key: Key) -> None:
        entry = (self._priority(key), self._tie(key))
        old = self._entry.get(key)
        self._entry[key] = entry
        if old is None:
            self._born[key] = entry[1]  # heap entries older than this are from an earlier residency
        elif self.monotone:  # its heap entry ranks no later than this: `victim` re-ranks it when met
            return
        heapq.heappush(self._heap, (*entry, key))
        if len(self._heap) > 4 * len(self._entry) + 1024:  # drop stale entries now and then
            self._heap = [(p, s, k) for k, (p, s) in self._entry.items()]
            heapq.heapify(self._heap)

    def insert(self, key: Key, now: int) -> None:
        self._push(key)

    def use(self, key: Key, now: int) -> None:
        """A routed use of an expert that is not resident (a streamed step read it from host memory)."""

    def remove(self, key: Key) -> None:
        del self._entry[key]
        del self._born[key]

    def keys(self) -> list[Key]:
        """The residents, next victim first (ties: least recently touched)."""
        return [k for k, _ in sorted(self._entry.items(), key=lambda kv: kv[1])]

    def victim(self, pinned: Callable[[Key], bool]) -> Key | None:
        skipped = []
        found = None
        while self._heap:
            p, s, key = self._heap[0]
            entry = self._entry.get(key)
            if entry != (p, s):  # stale: touched since, or evicted
                heapq.heappop(self._heap)
                if entry is not None and self.monotone and s >= self._born[key]:  # its live entry: re-ranked
                    heapq.heappush(self._heap, (*entry, key))
                continue
            if pinned(key):
                skipped.append(heapq.heappop(self._heap))
                continue
            found = key
            break
        for item in skipped:
            heapq.heappush(self._heap, item)
        return found


class LFU(HeapOrder):
    name = "lfu"
    monotone = True  # counts only grow (a rescale re-ranks every entry at once)

    def __init__(self, half_life: float = DEFAULT_LFU_HALF_LIFE) -> None:
        super().__init__()
        self.rate = 0.0 if not half_life or math.isinf(half_life) else 1.0 / half_life
        self._base = 0.0  # exponent already divided out of every count (keeps the weights finite)
        self._count: dict[Key, float] = {}  # decayed uses, resident or not

    def _priority(self, key: Key) -> float:
        return self._count.get(key, 0.0)

    def count(self, key: Key) -> float:
        """`key`'s decayed routed uses, resident or not (in this order's scale: only comparisons mean anything)."""
        return self._count.get(key, 0.0)

    def _count_use(self, key: Key, now: int) -> None:
        exp = now * self.rate - self._base
        if exp > 512.0:  # rescale every count by the same factor: the order is unchanged
            shift = math.floor(exp)
            self._base += shift
            self._count = {k: v * 2.0**-shift for k, v in self._count.items()}
            self._heap = []
            for k in self._entry:
                self._entry[k] = (self._count.get(k, 0.0), self._entry[k][1])
                self._heap.append((*self._entry[k], k))
            heapq.heapify(self._heap)
            exp -= shift
        self._count[key] = self._count.get(key, 0.0) + 2.0**exp

    def touch(self, key: Key, now: int, routed: bool) -> None:
        if routed:
            self._count_use(key, now)
        if self.monotone and key in self._entry:  # a resident (always, from the cache): no heap push
            self._seq += 1
            self._entry[key] = (self._count.get(key, 0.0), self._seq)
        else:
            self._push(key)

    def use(self, key: Key, now: int) -> None:
        self._count_use(key, now)


def build_eviction(name: str, num_layers: int, lfu_half_life: float = DEFAULT_LFU_HALF_LIFE):
    """The engine's order called `name`; the LFU half-life is in tokens (x `num_layers` ticks)."""
    if name == "lru":
        return LRU()
    if name == "lfu":
        return LFU(lfu_half_life * num_layers)
    raise ValueError(f"no eviction order called {name!r}; the engine has {', '.join(EVICTIONS)}")
