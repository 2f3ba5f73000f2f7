"""Which expert holds which slot of the cache's pool: the free slots, the LRU order, the pins, and what
one acquire hands out (`Acquired`). Host bookkeeping only: no copies, no counters, no device table
(`engine.experts.cache` keeps those in step with it).

Imports nothing of the engine, and no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

Key = tuple[int, int]  # (moe layer index, expert id)

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
    """Slot allocation over `num_slots` slots: expert -> slot, LRU order (oldest first), pin counts."""

    def __init__(self, num_slots: int) -> None:
        self.slot_of: dict[Key, int] = {}
        self.key_of: list[Key | None] = [None] * num_slots
        self.lru: OrderedDict[Key, None] = OrderedDict()  # oldest first
        self.pins = [0] * num_slots
        self.free = list(range(num_slots - 1, -1, -1))

    def __contains__(self, key: Key) -> bool:
        return key in self.slot_of

    def __len__(self) -> int:
        return len(self.slot_of)

    def get(self, key: Key) -> int | None:
        return self.slot_of.get(key)

    def pinned(self) -> int:
        return sum(1 for p in self.pins if p > 0)

    def victim(self) -> Key | None:
        """The least recently used expert whose slot is not pinned (None: every slot is pinned)."""
        for key in self.lru:  # oldest first
            if self.pins[self.slot_of[key]] == 0:
                return key
        return None

    def remove(self, key: Key) -> int:
        """Take `key` out of its slot; returns the slot (the caller reuses it)."""
        slot = self.slot_of.pop(key)
        del self.lru[key]
        self.key_of[slot] = None
        return slot

    def add(self, key: Key, slot: int) -> None:
        """Put `key` in `slot`, the most recently used."""
        if key in self.slot_of:  # a second slot for one expert would orphan the first for good
            raise RuntimeError(f"expert cache: {key} installed twice (slots {self.slot_of[key]} and {slot})")
        self.slot_of[key] = slot
        self.key_of[slot] = key
        self.lru[key] = None

    def touch(self, key: Key) -> None:
        """`key` becomes the most recently used."""
        self.lru.move_to_end(key)

    def pin(self, slot: int) -> None:
        self.pins[slot] += 1

    def unpin(self, slot: int) -> None:
        if self.pins[slot] <= 0:
            raise RuntimeError(f"expert cache: slot {slot} unpinned more often than pinned")
        self.pins[slot] -= 1
