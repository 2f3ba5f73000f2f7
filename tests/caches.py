"""A small CPU expert cache whose every slot holds a value naming its expert, for the cache and step tests."""

from __future__ import annotations

import torch

from engine.experts.cache import ExpertCache
from engine.experts.store import ExpertLayout, ExpertStore

E, L = 6, 2  # experts per layer, layers


def make_cache(slots: int, eviction=None) -> ExpertCache:
    layout = ExpertLayout.from_shapes({"gate_up_proj": (4, 3), "down_proj": (3, 2)}, torch.float32, E)
    store = ExpertStore(layout, L, pin=False)
    for layer in range(L):
        buf = store.allocate(layer)
        for e in range(E):
            buf[e].fill_(100 * layer + e)  # each expert's row holds a value naming it
    return ExpertCache(store, slots, torch.device("cpu"), eviction=eviction)
