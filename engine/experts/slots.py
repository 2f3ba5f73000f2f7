"""Which expert holds which slot of the cache's pool: the free slots, the eviction order
(`engine.experts.eviction`: LRU or LFU), the clock it reads, the pins, and what one acquire hands out
(`Acquired`). Host bookkeeping only: no copies, no counters, no device table (`engine.experts.cache` keeps
those in step with it).

Imports `engine.experts.eviction` only (and through it `engine.api.policies`), and no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.experts.eviction import LRU, Key

HIT, PREFETCH_HIT, MISS = "hit", "prefetch_hit", "miss"


class CacheFull(RuntimeError):
    """Every slot is pinned: the caller asked for more experts at once than the cache can hold."""


@dataclass
class Acquired:
    layer: int
    ids: list[int]
    slots: list[int]
    kinds: list[str]
    stall_seconds: float | None = None  # CPU: measured now; CUDA: read later from events
    events: list = field(default_factory=list)  # per id: its copy's CUDA event not yet waited on, or None
    stalls: list = field(default_factory=list)  # CUDA (before, after) event pairs around this step's waits


def slots_for_budget(
    total_experts: int,
    expert_nbytes: int,
    min_slots: int,
    fraction: float | None = None,
    gigabytes: float | None = None,
    free_bytes: int | None = None,
) -> int:
    """How many slots the cache gets: from a fraction, from GB, or from free device memory."""
    if fraction is not None:
        slots = round(fraction * total_experts)
    elif gigabytes is not None:
        slots = int(gigabytes * 1e9 // expert_nbytes)
    elif free_bytes is not None:
        slots = int(free_bytes // expert_nbytes)
    else:
        slots = total_experts
    return max(min_slots, min(total_experts, slots))


class SlotPool:
    """Slot allocation over `num_slots` slots: expert -> slot, the eviction order, pin counts.

    The clock (`now`) ticks once per layer-step (`tick`, called by the cache when a layer's routing is
    accounted), as the simulator's does, so an LFU half-life in tokens is `num_layers` ticks."""

    def __init__(self, num_slots: int, order=None) -> None:
        self.slot_of: dict[Key, int] = {}
        self.key_of: list[Key | None] = [None] * num_slots
        self.order = order if order is not None else LRU()
        self.now = -1  # the first layer-step is tick 0
        self.pins = [0] * num_slots
        self._pinned = 0  # slots with a pin count above zero
        self.free = list(range(num_slots - 1, -1, -1))

    def __contains__(self, key: Key) -> bool:
        return key in self.slot_of

    def __len__(self) -> int:
        return len(self.slot_of)

    def get(self, key: Key) -> int | None:
        return self.slot_of.get(key)

    def pinned(self) -> int:
        """Slots pinned now (kept by `pin` and `unpin`: O(1))."""
        return self._pinned

    def tick(self) -> None:
        """A layer's routing is being accounted: one layer-step later."""
        self.now += 1

    def keys(self) -> list[Key]:
        """The resident experts, the next victim first (pins aside)."""
        return self.order.keys()

    def victim(self) -> Key | None:
        """The expert the order evicts first among those whose slot is not pinned (None: all pinned)."""
        pins, slot_of = self.pins, self.slot_of
        return self.order.victim(lambda key: pins[slot_of[key]] > 0)

    def remove(self, key: Key) -> int:
        """Take `key` out of its slot; returns the slot (the caller reuses it)."""
        slot = self.slot_of.pop(key)
        self.order.remove(key)
        self.key_of[slot] = None
        return slot

    def add(self, key: Key, slot: int) -> None:
        """Put `key` in `slot` (for LRU, the most recently used)."""
        if key in self.slot_of:  # a second slot for one expert would orphan the first for good
            raise RuntimeError(f"expert cache: {key} installed twice (slots {self.slot_of[key]} and {slot})")
        self.slot_of[key] = slot
        self.key_of[slot] = key
        self.order.insert(key, self.now)

    def touch(self, key: Key, routed: bool = True) -> None:
        """`key` (resident) was used by a routed step (`routed`) or re-predicted by a prefetch."""
        self.order.touch(key, self.now, routed)

    def use(self, key: Key) -> None:
        """`key`, not resident, was routed: a miss about to be installed, or read from host memory by a
        streamed step (LFU counts the use; LRU orders by insertion and touches only)."""
        self.order.use(key, self.now)

    def pin(self, slot: int) -> None:
        if self.pins[slot] == 0:
            self._pinned += 1
        self.pins[slot] += 1

    def unpin(self, slot: int) -> None:
        if self.pins[slot] <= 0:
            raise RuntimeError(f"expert cache: slot {slot} unpinned more often than pinned")
        self.pins[slot] -= 1
        if self.pins[slot] == 0:
            self._pinned -= 1
