"""Every Prometheus metric of the project, in one place; the only importer of `prometheus_client`.

The engine fills plain counters (`engine.api.stats.CacheCounters`) and calls the few `observe_*`
methods here; cache counters are read by a collector at scrape time, so the decode loop never
touches a Prometheus object for them. Each `Metrics` owns its registry, so tests can build several.
Names follow Prometheus conventions (`moe_` prefix, `_total` counters, `_seconds` histograms); the
README lists them. Ratios (hit rate, recall, wasted share) are left to PromQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.api.stats import HOST_PHASES, CacheCounters, RequestStats

disable_created_metrics()  # no `_created` series: they double the series count and no panel reads them

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
TPOT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
)
STALL_BUCKETS = (
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    1.0,
)
PREDICT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 7.5e-5, 1e-4, 1.5e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

# name -> help, for the README table and tests; cache metrics come from the collector below.
CACHE_METRICS = {
    "moe_expert_requests_total": "Routed experts asked of the expert cache, by MoE layer.",
    "moe_expert_hits_total": "Routed experts found on the device, by layer and source (resident|prefetched).",
    "moe_expert_misses_total": "Routed experts not on the device when their step ran (loaded on demand, or read from host memory by a streamed step), by layer.",
    "moe_prefetch_issued_total": "Expert copies started by a prefetch, by layer.",
    "moe_prefetch_used_total": "Prefetched experts that the router then picked, by layer.",
    "moe_prefetch_wasted_total": "Prefetched experts not picked by the router in their step, by layer.",
    "moe_predictor_routed_total": "Routed experts for which a prediction existed (recall denominator), by layer.",
    "moe_predictor_hits_total": "Routed experts the prediction contained (recall numerator), by layer.",
    "moe_expert_host_computed_total": "Missed experts computed on the host CPU instead of copied (MOE_HYBRID_MISSES), by layer.",
    "moe_expert_bytes_copied_total": "Bytes moved host->device, by reason (prefetch|demand|fill|host_read).",
    "moe_expert_cache_slots_used": "Expert cache slots holding an expert.",
    "moe_expert_cache_slots_capacity": "Expert cache slots on the device.",
}


STEP_METRIC = (
    "moe_decode_steps_total",
    "Decode steps run, by kind (streamed|segmented|whole|eager).",
)
STEP_KINDS = ("streamed", "segmented", "whole", "eager")


class _ScrapedCounter:
    """One counter family with one label, its values read from the engine at scrape time (`metric`: its
    name and help; `values`: the label's values, each always exposed; `read()`: label value -> count)."""

    def __init__(
        self, metric: tuple[str, str], label: str, values: tuple[str, ...], read: Callable[[], dict]
    ) -> None:
        self.metric, self.label, self.values, self.read = metric, label, values, read

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        got = dict(self.read())  # a copy: the engine thread may be adding to it
        name, help_ = self.metric
        fam = CounterMetricFamily(name[: -len("_total")], help_, labels=[self.label])
        for value in self.values:
            fam.add_metric([value], got.get(value, 0))
        yield fam


HOST_METRIC = (
    "moe_segmented_host_seconds_total",
    "Host time inside segmented decode steps, by phase (launch|read_copy|predict_wait|predict_issue|route_wait|"
    "route_read|route|release): the *_wait phases wait for the GPU, the rest is the host's own work.",
)


GC_BUCKETS = STALL_BUCKETS  # moe_gc_pause_seconds: 10 us to 1 s
GC_HELP = (
    "Python garbage-collector passes in the server process, by generation (2: a full pass); every thread, "
    "the engine's included, waits while one runs."
)


class _GCCollector:
    def __init__(self, passes: Callable[[], dict[int, tuple[list[int], float]]]) -> None:
        self.passes = passes

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        fam = HistogramMetricFamily("moe_gc_pause_seconds", GC_HELP, labels=["generation"])
        for gen, (counts, total) in sorted(self.passes().items()):
            cum, buckets = 0, []
            for bound, n in zip([*map(str, GC_BUCKETS), "+Inf"], counts, strict=True):
                cum += n
                buckets.append((bound, cum))
            fam.add_metric([str(gen)], buckets, total)
        yield fam


class _CacheCollector:
    def __init__(self, counters: CacheCounters) -> None:
        self.counters = counters

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        c = self.counters
        labels = [str(x) for x in c.layer_ids]

        def per_layer(name: str, values: list[int]) -> CounterMetricFamily:
            fam = CounterMetricFamily(name[: -len("_total")], CACHE_METRICS[name], labels=["layer"])
            for lab, v in zip(labels, values, strict=True):
                fam.add_metric([lab], v)
            return fam

        yield per_layer("moe_expert_requests_total", c.requests)
        hits = CounterMetricFamily(
            "moe_expert_hits", CACHE_METRICS["moe_expert_hits_total"], labels=["layer", "source"]
        )
        for lab, r, p in zip(labels, c.hits_resident, c.hits_prefetched, strict=True):
            hits.add_metric([lab, "resident"], r)
            hits.add_metric([lab, "prefetched"], p)
        yield hits
        yield per_layer("moe_expert_misses_total", c.misses)
        yield per_layer("moe_prefetch_issued_total", c.prefetch_issued)
        yield per_layer("moe_prefetch_used_total", c.prefetch_used)
        yield per_layer("moe_prefetch_wasted_total", c.prefetch_wasted)
        yield per_layer("moe_predictor_routed_total", c.routed_scored)
        yield per_layer("moe_predictor_hits_total", c.predicted_routed)
        yield per_layer("moe_expert_host_computed_total", c.host_computed)
        by = CounterMetricFamily(
            "moe_expert_bytes_copied", CACHE_METRICS["moe_expert_bytes_copied_total"], labels=["reason"]
        )
        by.add_metric(["prefetch"], c.bytes_prefetch)
        by.add_metric(["demand"], c.bytes_demand)
        by.add_metric(["fill"], c.bytes_fill)
        by.add_metric(["host_read"], c.bytes_host_read)
        yield by
        yield GaugeMetricFamily(
            "moe_expert_cache_slots_used", CACHE_METRICS["moe_expert_cache_slots_used"], value=c.slots_used
        )
        yield GaugeMetricFamily(
            "moe_expert_cache_slots_capacity",
            CACHE_METRICS["moe_expert_cache_slots_capacity"],
            value=c.slots_capacity,
        )


class Metrics:
    """Owns a registry with every metric. Build one per engine (or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "moe_request_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "moe_request_time_per_output_token_seconds",
            "Time between consecutive generated tokens of a request.",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "moe_request_e2e_latency_seconds",
            "Time from arrival to the last token of a request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "moe_request_queue_time_seconds",
            "Time a request waited before it was first scheduled.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens_hist = Histogram(
            "moe_request_prompt_tokens",
            "Prompt length of finished requests, in tokens.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generation_tokens_hist = Histogram(
            "moe_request_generation_tokens",
            "Generated tokens of finished requests.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("moe_prompt_tokens", "Prompt tokens processed (prefill).", registry=r)
        self.generation_tokens = Counter("moe_generation_tokens", "Tokens generated (decode).", registry=r)
        self.requests = Counter(
            "moe_requests",
            "Finished requests, by finish reason (stop|length|abort|error).",
            ["finish_reason"],
            registry=r,
        )
        self.running = Gauge("moe_requests_running", "Requests being decoded now.", registry=r)
        self.waiting = Gauge("moe_requests_waiting", "Requests waiting to be scheduled.", registry=r)
        self.prediction_latency = Histogram(
            "moe_prediction_latency_seconds",
            "Time from a layer's pre-attention tap until its prefetch copies are issued (predictor, policy, host read).",
            buckets=PREDICT_BUCKETS,
            registry=r,
        )
        self.stall = Histogram(
            "moe_expert_load_stall_seconds",
            "Time one layer-step waited for expert copies (0 when all were resident).",
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.info = Info(
            "moe_policy",
            "Active prefetch policy, model, predictor bundle and whether copies are coded.",
            registry=r,
        )
        self.engine_up = Gauge(
            "moe_engine_healthy", "1 while the engine can serve, 0 after a fatal error.", registry=r
        )
        self.engine_up.set(1)

    def attach_cache(self, counters: CacheCounters) -> None:
        self.registry.register(_CacheCollector(counters))

    def attach_gc(self, passes: Callable[[], dict[int, tuple[list[int], float]]]) -> None:
        """`passes()` gives, per collector generation, the passes counted into `GC_BUCKETS` (one count a
        bucket, not cumulative) and their summed seconds (`engine.frontend.heap.GCWatch`): read at scrape
        time, so the collector's callback never takes a Prometheus lock."""
        self.registry.register(_GCCollector(passes))

    def attach_steps(self, kinds: Callable[[], dict[str, int]]) -> None:
        """`kinds()` gives the decode steps run so far by kind (see `STEP_KINDS`)."""
        self.registry.register(_ScrapedCounter(STEP_METRIC, "kind", STEP_KINDS, kinds))

    def attach_host_clock(self, seconds: Callable[[], dict[str, float]]) -> None:
        """`seconds()` gives the segmented steps' host seconds so far by phase (`HOST_PHASES`)."""
        self.registry.register(_ScrapedCounter(HOST_METRIC, "phase", HOST_PHASES, seconds))

    def set_info(self, **labels: str) -> None:
        self.info.info({k: str(v) for k, v in labels.items()})

    def set_queue(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def observe_request(self, s: RequestStats) -> None:
        if s.time_to_first_token is not None:
            self.ttft.observe(s.time_to_first_token)
        for dt in s.time_per_output_token:
            self.tpot.observe(dt)
        self.e2e.observe(s.e2e_latency)
        self.queue_time.observe(s.queue_time)
        self.prompt_tokens_hist.observe(s.prompt_tokens)
        self.generation_tokens_hist.observe(s.generation_tokens)
        self.requests.labels(finish_reason=s.finish_reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
