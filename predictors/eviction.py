"""Eviction orders for the simulated expert cache: `lru` (the engine's), `lfu` (decayed counts),
`predicted` (the predictor's scores), `belady`.

An order only ranks the resident experts; `predictors.sim_cache.SimCache` owns residency, pins and counters
and asks the order for a victim among the unpinned residents. Keys are (moe layer, expert id), one pool
over all layers, as in `engine.experts.cache.ExpertCache`.

- `lru` and `lfu` are the engine's own orders (`engine.experts.eviction`, `MOE_EVICTION`), imported from
  there so the simulator and the engine rank residents with the same code: least recently touched first
  (a prefetch of a resident expert touches it, as `ExpertCache.prefetch` does), and the smallest decayed
  count of routed uses (a use `half_life` tokens ago weighs half a use now; counts outlive eviction;
  prefetches are not uses; ties to the least recently touched).
- `predicted`: the expert whose layer's most recent predictor score is lowest: the bundle's probability
  (sigmoid of its logits; the clipped output for the MSE loss) for that expert at that layer's last tap, set
  by `set_scores(layer, scores)` before the tap's prefetch. Layers before the current one hold this token's
  scores, the others the previous token's. Ties go to the least recently touched; an expert of a layer not
  scored yet counts 0.
- `belady`: the expert whose next routed use is farthest in the future (never used again: infinitely
  far; ties to the least recently touched). Needs the whole future routing (`future`), so it is offline
  only: the limit any eviction order could reach for demand loads at this cache size.

No `stale` order (the oldest last use counted in its layer's own steps): in this single-pool design every
layer steps once per token, so a layer's clock is the token clock shifted by under one token, and the
staleness order with LRU's tie-break picks exactly LRU's victim (if a's last use is a step before b's, a is
at least as stale; equal staleness falls to recency).

Pure Python, torch-free (imports `engine.experts.eviction` only). `predicted` and `belady` are
lazy-deletion heaps on the engine's `HeapOrder`, so a victim costs O(log n) plus the pinned entries skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from engine.experts.eviction import DEFAULT_LFU_HALF_LIFE, LFU, LRU, HeapOrder, Key

__all__ = ["DEFAULT_LFU_HALF_LIFE", "LFU", "LRU", "Belady", "HeapOrder", "Key", "Predicted", "build_order"]
EVICTIONS = ("lru", "lfu", "predicted", "belady")
DEFAULT_EVICTIONS = ("lru", "lfu", "belady")  # those that need no predictor


class Predicted(HeapOrder):
    """Lowest score of the expert's layer's last tap first, ties to the least recently touched. A layer's
    new scores re-rank its residents (at most E heap pushes per tap)."""

    name = "predicted"

    def __init__(self) -> None:
        super().__init__()
        self._scores: dict[int, list[float]] = {}  # layer -> its last tap's score per expert
        self._layer_keys: dict[int, set[Key]] = {}  # layer -> its resident keys
        self._touched: dict[Key, int] = {}  # key -> the touch count at its last insert or touch

    def _priority(self, key: Key) -> float:
        scores = self._scores.get(key[0])
        return scores[key[1]] if scores is not None else 0.0

    def _tie(self, key: Key) -> int:
        return self._touched[key]

    def _stamp(self, key: Key) -> None:
        self._seq += 1
        self._touched[key] = self._seq

    def insert(self, key: Key, now: int) -> None:
        self._layer_keys.setdefault(key[0], set()).add(key)
        self._stamp(key)
        self._push(key)

    def touch(self, key: Key, now: int, routed: bool) -> None:
        self._stamp(key)
        self._push(key)

    def remove(self, key: Key) -> None:
        super().remove(key)
        self._layer_keys[key[0]].discard(key)
        del self._touched[key]

    def set_scores(self, layer: int, scores: Sequence[float]) -> None:
        """Layer `layer`'s tap scored its experts (probabilities [E], higher = more likely routed)."""
        self._scores[layer] = [float(v) for v in scores]
        for key in self._layer_keys.get(layer, ()):
            if self._entry[key][0] != self._priority(key):
                self._push(key)


class Belady(HeapOrder):
    """Farthest next routed use first. `future` lists, in order, the keys routed at each time step; the
    cache calls `touch(key, now, routed=True)` for each of them exactly once, in the same order."""

    name = "belady"

    def __init__(self, future: Iterable[tuple[int, Iterable[Key]]]) -> None:
        super().__init__()
        self._uses: dict[Key, list[int]] = {}
        for t, keys in future:
            for key in keys:
                self._uses.setdefault(key, []).append(t)
        self._next: dict[Key, int] = dict.fromkeys(self._uses, 0)  # index of the next unconsumed use

    def _next_use(self, key: Key) -> float:
        uses = self._uses.get(key)
        i = self._next.get(key, 0)
        return uses[i] if uses is not None and i < len(uses) else math.inf

    def _priority(self, key: Key) -> float:
        return -self._next_use(key)  # the farthest next use is the smallest priority

    def touch(self, key: Key, now: int, routed: bool) -> None:
        if routed:
            uses = self._uses.get(key)
            if uses is None or self._next[key] >= len(uses) or uses[self._next[key]] != now:
                raise ValueError(f"belady: {key} routed at {now}, not a use its future listed")
            self._next[key] += 1
        self._push(key)


def build_order(
    name: str, *, future=None, lfu_half_life: float = DEFAULT_LFU_HALF_LIFE, ticks_per_token: int = 1
):
    """The named order. The cache's clock ticks once per layer-step (`ticks_per_token` = MoE layers), so the
    LFU half-life in tokens is stretched to ticks."""
    if name == "lru":
        return LRU()
    if name == "lfu":
        return LFU(lfu_half_life * ticks_per_token)
    if name == "predicted":
        return Predicted()
    if name == "belady":
        if future is None:
            raise ValueError("belady eviction needs the future routing")
        return Belady(future)
    raise ValueError(f"no eviction order called {name!r}; known: {', '.join(EVICTIONS)}")
