"""Hybrid misses: some of a decode layer's missed experts are computed on the host CPU, from the pinned
expert store, while PCIe copies the others in (issue #17, item 4; `MOE_HYBRID_MISSES`).

A missed expert costs the step its copy (`copy_ms`: expert bytes over the host-to-device bandwidth) or, on
the host, `host_ms` per row routed to it (one gated MLP over one hidden state, reading the expert at host
memory bandwidth, while copies run). `HostExperts.choose` gives the host the misses that balance the two
sides: it adds misses to the host, the ones with the fewest routed rows first, while that shortens
max(copies left x copy_ms, the host's rows x host_ms). It always leaves at least one routed expert on the
device (a resident or copied one), because the device's computation of the host's (row, expert) pairs is
redirected to it with weight zero (`redirect`): the grouped kernels then need no other change.

`output` computes the host's share with the engine's own expert math (`_expert_mlp` on the store's views,
the ops transformers' eager experts loop runs), the routing weights applied per pair, summed per row; the
device adds it to its own output. So the layer's output is the same sum, in a different order.

Imports torch, `engine.experts.store` and `engine.experts.hybrid_split` only; the expert math is passed in (`engine.model.offload`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.experts.hybrid_split import host_share
from engine.experts.store import ExpertStore

ExpertMath = Callable[[object, dict, int, torch.Tensor], torch.Tensor]  # (module, views, expert, x) -> y


@dataclass(frozen=True)
class HybridRates:
    copy_ms: float  # one expert over PCIe
    host_ms: float  # one expert on one row, on the host


@dataclass
class HostTiming:
    """What the host's share cost, summed since the last `reset`: the calibrated rates against the decode
    loop's own time (`output`), and the whole host side of those layer-steps (`route_s`: from the routed
    ids on the host to the experts' launch, copies issued and the host's output sent included)."""

    layer_steps: int = 0  # layer-steps the host took misses in
    experts: int = 0  # missed experts it computed
    pairs: int = 0  # (row, expert) pairs it computed
    output_s: float = 0.0  # inside `output`
    route_s: float = 0.0  # the host side of those layer-steps (set by the caller)

    def reset(self) -> None:
        self.layer_steps = self.experts = self.pairs = 0
        self.output_s = self.route_s = 0.0

    def summary(self, tokens: int, rates: HybridRates) -> dict:
        """Per token and per pair, next to what the calibration predicted for the same pairs."""
        per = max(tokens, 1)
        return {
            "layer_steps_per_token": self.layer_steps / per,
            "experts_per_token": self.experts / per,
            "output_ms_per_token": 1e3 * self.output_s / per,
            "route_ms_per_token": 1e3 * self.route_s / per,
            "output_ms_per_pair": 1e3 * self.output_s / self.pairs if self.pairs else None,
            "calibrated_ms_per_pair": rates.host_ms,
        }


class HostExperts:
    """The host's share of a layer's misses: which ones (`choose`), and their output (`output`)."""

    def __init__(self, store: ExpertStore, rates: HybridRates, math: ExpertMath) -> None:
        self.store = store
        self.rates = rates
        self.math = math
        self.spent = HostTiming()

    def choose(self, missing: Sequence[int], rows: dict[int, int], routed: int) -> list[int]:
        """The missed experts to compute on the host: `missing` (not resident), `rows[e]` the rows routed
        to expert e, `routed` the layer's distinct routed experts (resident ones included)."""
        r = self.rates
        return host_share([(e, rows.get(e, 1)) for e in missing], r.copy_ms, r.host_ms, routed)

    def share(self, rows: dict[int, int], resident: Callable[[int], bool]) -> list[int]:
        """`choose` for one layer-step: `rows[e]` the rows routed to each routed expert e, `resident(e)`
        whether e is on the device; [] when nothing missed."""
        missing = [e for e in rows if not resident(e)]
        return self.choose(missing, rows, len(rows)) if missing else []

    def output(
        self,
        mod,
        layer: int,
        x: torch.Tensor,
        ids: list[list[int]],
        weights: torch.Tensor,
        host: Sequence[int],
    ) -> torch.Tensor:
        """[T, D] on the host: the weighted outputs of the `host` experts for the rows routed to them; x [T, D]
        and weights [T, k] on the host, ids the rows' routed experts (host lists)."""
        t0 = time.perf_counter()
        views = self.store.layer_views(layer)
        out = torch.zeros(x.shape, dtype=torch.float32)
        chosen = set(host)
        spent = self.spent
        for e in sorted(chosen):
            pairs = [(t, p) for t, row in enumerate(ids) for p, v in enumerate(row) if v == e]
            tok = torch.tensor([t for t, _ in pairs])
            pos = torch.tensor([p for _, p in pairs])
            y = self.math(mod, views, e, x[tok])  # [t, D]
            out.index_add_(0, tok, y.float() * weights[tok, pos, None].float())
            spent.pairs += len(pairs)
        out = out.to(x.dtype)
        spent.layer_steps += 1
        spent.experts += len(chosen)
        spent.output_s += time.perf_counter() - t0
        return out


def host_pairs(ids: torch.Tensor, host: Sequence[int]) -> torch.Tensor:
    """Bool [T, k]: the (row, position) pairs of `ids` [T, k] routed to a `host` expert."""
    return torch.isin(ids, torch.tensor(sorted(host), dtype=ids.dtype, device=ids.device))


def redirect(
    ids: torch.Tensor, weights: torch.Tensor, host: Sequence[int], to: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights) [T, k] with each pair routed to a `host` expert sent to expert `to` (one the device
    computes) with weight zero, so the device adds nothing for it."""
    on_host = host_pairs(ids, host)
    return torch.where(on_host, torch.full_like(ids, to), ids), weights.masked_fill(on_host, 0)


def timed_median_ms(fn: Callable[[int], object], reps: int, warm_s: float) -> float:
    """The median of `reps` timed calls fn(i), in ms, after calling it for at least `warm_s` seconds (and
    at least twice): the first calls of a process run slower by far (measured on the H200's host: a
    median of 14 ms a row for the first hybrid runner's calibration, 0.33 ms for the next one's)."""
    end, i = time.perf_counter() + warm_s, 0
    while i < 2 or time.perf_counter() < end:
        fn(i)
        i += 1
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def calibrate(
    store: ExpertStore,
    math: ExpertMath,
    mod,
    hidden: int,
    device: torch.device,
    reps: int = 7,
    warm_s: float = 0.1,
) -> HybridRates:
    """Measure `HybridRates` on this machine: one expert's copy to `device` (pinned) and one expert on one
    row of `hidden` values on the host (layer 0's experts in turn), each the median of `reps` calls after
    `warm_s` seconds of the same calls."""
    views = store.layer_views(0)
    n = store.layout.num_experts
    x = torch.zeros((1, hidden), dtype=store.layout.dtype)
    host_ms = timed_median_ms(lambda i: math(mod, views, i % n, x), reps, warm_s)
    slot = torch.empty(store.layout.numel, dtype=store.layout.dtype, device=device)

    def copy(i: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        slot.copy_(store.row(0, i % n), non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return HybridRates(copy_ms=timed_median_ms(copy, reps, warm_s), host_ms=host_ms)
