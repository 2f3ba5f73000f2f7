"""Plain counters the engine fills on its hot path; `engine.api.metrics` reads them at scrape time.

Torch-free and Prometheus-free: incrementing a list element costs nothing measurable, and the
Prometheus objects are only touched when /metrics is scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PER_LAYER = (
    "requests",
    "hits_resident",
    "hits_prefetched",
    "misses",
    "prefetch_issued",
    "prefetch_used",
    "prefetch_wasted",
    "predicted_routed",
    "routed_scored",
    "host_computed",
)


def _zeros(n: int) -> list[int]:
    return [0] * n


@dataclass
class CacheCounters:
    """Expert-cache and prefetch accounting, one entry per MoE layer (index = position in the MoE layer list)."""

    num_layers: int
    layer_ids: list[int] = field(default_factory=list)  # decoder-layer index of each MoE layer, for labels
    requests: list[int] = field(default_factory=list)  # routed experts asked of the cache
    hits_resident: list[int] = field(
        default_factory=list
    )  # already there, not brought by a prefetch still unused
    hits_prefetched: list[int] = field(default_factory=list)  # first use of an expert a prefetch brought
    misses: list[int] = field(default_factory=list)  # demand loads
    prefetch_issued: list[int] = field(default_factory=list)  # copies started by a prefetch
    prefetch_used: list[int] = field(default_factory=list)  # prefetched experts later routed
    prefetch_wasted: list[int] = field(
        default_factory=list
    )  # prefetched experts evicted or never routed in their step
    predicted_routed: list[int] = field(default_factory=list)  # routed experts that the prediction contained
    routed_scored: list[int] = field(default_factory=list)  # routed experts for which a prediction existed
    host_computed: list[int] = field(
        default_factory=list
    )  # missed experts computed on the host (MOE_HYBRID_MISSES)
    bytes_prefetch: int = 0
    bytes_demand: int = 0
    bytes_host_read: int = 0  # expert weights read by a step's kernels from host memory (streamed decode)
    bytes_fill: int = 0  # missed experts copied in after a streamed step read them from host memory
    slots_used: int = 0
    slots_capacity: int = 0

    def __post_init__(self) -> None:
        n = self.num_layers
        if not self.layer_ids:
            self.layer_ids = list(range(n))
        for name in PER_LAYER:
            if not getattr(self, name):
                setattr(self, name, _zeros(n))

    def clear_counts(self) -> None:
        """Zero every count and byte total, in place (the metrics keep reading this object); the
        occupancy (`slots_used`, `slots_capacity`) stays."""
        for name in PER_LAYER:
            getattr(self, name)[:] = _zeros(self.num_layers)  # the same lists: nothing holds a stale one
        self.bytes_prefetch = self.bytes_demand = self.bytes_host_read = self.bytes_fill = 0

    def totals(self) -> dict[str, int]:
        out = {name: sum(getattr(self, name)) for name in PER_LAYER}
        out.update(
            bytes_prefetch=self.bytes_prefetch,
            bytes_demand=self.bytes_demand,
            bytes_host_read=self.bytes_host_read,
            bytes_fill=self.bytes_fill,
        )
        return out


@dataclass(frozen=True)
class RequestStats:
    """One finished request, as the vLLM-style request metrics need it."""

    prompt_tokens: int
    generation_tokens: int
    time_to_first_token: float | None  # seconds; None if no token was made
    time_per_output_token: tuple[float, ...]  # seconds between consecutive tokens
    e2e_latency: float  # seconds from arrival to finish
    queue_time: float  # seconds from arrival to first scheduled
    finish_reason: str


# the phases of a segmented decode step's host time (`engine.runner.host_clock`,
# `moe_segmented_host_seconds_total`), in the order a routed layer meets them; the *_wait phases are the host
# waiting for the GPU
HOST_PHASES = (
    "launch",
    "read_copy",
    "predict_wait",
    "predict_issue",
    "route_wait",
    "route_read",
    "route",
    "release",
)
