"""What the expert cache reports and what it waits for, as types: a `CacheListener` is told each
layer-step's stall and routed experts (the metrics, a routing recorder), a `RoutingBarrier` is waited on
before a layer's routing is accounted (the prefetcher, whose worker thread may still be issuing copies).
The cache gets them through `ExpertCache.listen` and `ExpertCache.set_routing_barrier`.

Imports nothing of the engine, and no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class CacheListener(Protocol):
    def on_stall(self, seconds: float) -> None:
        """One layer-step's wait for expert copies (0.0: none)."""
        ...

    def on_route(self, layer: int, routed: list[int]) -> None:
        """One layer-step's routed experts (distinct)."""
        ...


@dataclass(frozen=True)
class Listener:
    """A `CacheListener` made of two optional callables (None: not told)."""

    stall: Callable[[float], None] | None = None
    route: Callable[[int, list[int]], None] | None = None

    def on_stall(self, seconds: float) -> None:
        if self.stall is not None:
            self.stall(seconds)

    def on_route(self, layer: int, routed: list[int]) -> None:
        if self.route is not None:
            self.route(layer, routed)


class RoutingBarrier(Protocol):
    def wait(self) -> None:
        """Return once nothing else touches the cache (every prefetch submitted so far is issued)."""
        ...
