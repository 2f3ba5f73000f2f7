"""Which of a layer's missed experts the host computes under hybrid misses (`MOE_HYBRID_MISSES`): the one
rule the engine (`engine.experts.host_experts`) and the simulator's clock (`predictors.sim_timeline`) share.

A miss costs its copy (`copy_ms`) if the device computes it, or `host_ms` per routed row if the host does,
the two sides running at once. Misses go to the host, the ones with the fewest rows first, while that
shortens max(copies left x copy_ms, the host's rows x host_ms); one routed expert always stays on the device
(the device's pairs of host experts are redirected to it at weight zero).

Imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence


def host_share(missing: Sequence[tuple[int, int]], copy_ms: float, host_ms: float, routed: int) -> list[int]:
    """`missing`: (expert, rows routed to it) of the experts not on the device; `routed`: the layer's distinct
    routed experts, resident ones included. Returns the experts the host computes."""
    order = sorted(missing, key=lambda er: (er[1], er[0]))
    host: list[int] = []
    spent, copies = 0.0, len(order)
    best = copies * copy_ms
    for e, rows in order:
        if routed - len(host) - 1 < 1:  # one routed expert stays on the device
            break
        t = max((copies - 1) * copy_ms, spent + rows * host_ms)
        if t >= best:
            break
        host.append(e)
        spent += rows * host_ms
        copies -= 1
        best = t
    return host
