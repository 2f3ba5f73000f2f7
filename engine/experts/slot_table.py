"""The device slot table `dev[layer, expert]` (int32, -1 = not resident), so code that runs without the
host (a captured decode step) can find routed experts' slots.

The host keeps a mirror (`host`, pinned on CUDA) in step with every install and eviction and marks the
rows it changed; `sync(layer)` sends one changed row before that layer's experts run, `upload()` the
whole table. An entry may be held at -1 while its copy is still in flight (`landing`: streamed fills),
so a step sees either a complete slot or none. Copies into the table run on the current stream.

Imports torch and `engine.experts.slots` only (the mirror is written through its numpy view).
"""

from __future__ import annotations

import torch

from engine.experts.slots import Key


class SlotTable:
    def __init__(self, num_layers: int, num_experts: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.full((num_layers, num_experts), -1, dtype=torch.int32, pin_memory=self.cuda)
        self.dev = self.host.to(device) if self.cuda else self.host  # [L, E]
        self._entries = self.host.numpy()  # the same memory: an entry written for ~0.1 us, not torch's ~15
        self.dirty: set[int] = set()  # layers whose device row is stale
        self.landing: dict[Key, int] = {}  # streamed fills whose copy may still be in flight (entry -1)

    def show(self, key: Key, slot: int) -> None:
        """Point the entry of `key` at `slot` (sent to the device with its layer's row)."""
        self.landing.pop(key, None)
        self._entries[key[0], key[1]] = slot
        self.dirty.add(key[0])

    def hold(self, key: Key, slot: int) -> None:
        """`key` has `slot` but its entry stays -1 until `show` (its copy has landed)."""
        self.landing[key] = slot

    def clear(self, key: Key) -> None:
        """`key` has no slot any more."""
        self.landing.pop(key, None)
        self._entries[key[0], key[1]] = -1
        self.dirty.add(key[0])

    def sync(self, layer: int) -> None:
        """Send `layer`'s row to the device if it changed (on the current stream)."""
        if layer in self.dirty:
            self.dirty.discard(layer)
            if self.cuda:
                self.dev[layer].copy_(self.host[layer], non_blocking=True)

    def upload(self, always: bool = False) -> None:
        """Send the whole table to the device if any row changed (or `always`), on the current stream."""
        if self.dirty or always:
            self.dirty.clear()
            if self.cuda:
                self.dev.copy_(self.host, non_blocking=True)
