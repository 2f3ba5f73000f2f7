"""Settings reach the parts of the engine they switch: MOE_CUDA_GRAPHS also governs the prefetch taps."""

from __future__ import annotations

import engine.frontend.startup as startup
from engine.frontend.async_engine import AsyncEngine
from moe_prefetch.settings import load_settings


def test_cuda_graphs_off_reaches_the_prefetcher(monkeypatch):
    seen: dict = {}
    real = startup.build_prefetcher

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(startup, "build_prefetcher", recording)
    monkeypatch.setenv("MOE_CUDA_GRAPHS", "false")
    cfg = load_settings(device="cpu", policy="exact").engine_config()
    engine = AsyncEngine.from_config(cfg)
    engine.load()  # the built-in model and its predictor bundle, on the CPU
    assert engine.prefetcher is not None
    assert seen["graphs_enabled"] is False  # the taps are never captured when the steps are not
    assert engine.runner.graphs_enabled is False


def _loaded(monkeypatch, **env) -> AsyncEngine:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    engine = AsyncEngine.from_config(load_settings(device="cpu", policy="none").engine_config())
    engine.load()
    return engine


def test_coded_experts_reach_the_cache_and_change_no_logits(monkeypatch):
    import torch

    env = {"MOE_DTYPE": "bfloat16", "MOE_EXPERT_CACHE_FRACTION": "0.5"}
    plain = _loaded(monkeypatch, **env)
    coded = _loaded(monkeypatch, MOE_CODED_EXPERTS="true", **env)
    assert plain.om.cache.coded is None and plain.om.store.coded is None
    assert coded.om.cache.coded is coded.om.store.coded is not None  # the cache copies codes
    assert coded.om.cache.copy_nbytes < 0.8 * plain.om.cache.copy_nbytes
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 250, 4]])
    with torch.no_grad():
        a = plain.om.model(input_ids=ids).logits
        b = coded.om.model(input_ids=ids).logits
    assert sum(coded.om.cache.counters.misses) > 0  # the forward copied (and decoded) experts
    assert torch.equal(a, b)
    # /metrics says which copies the server makes (moe_policy_info's coded_copies label)
    assert 'coded_copies="true"' in _exposition(coded) and 'coded_copies="false"' in _exposition(plain)


def _exposition(engine: AsyncEngine) -> str:
    body, _content_type = engine.metrics_exposition()
    return body.decode()


def test_coded_experts_refuse_float32_weights_with_a_clear_error(monkeypatch):
    import pytest

    from engine.api.errors import EngineError

    with pytest.raises(EngineError, match="MOE_CODED_EXPERTS: coded experts need bfloat16"):
        _loaded(monkeypatch, MOE_CODED_EXPERTS="true", MOE_DTYPE="float32", MOE_EXPERT_CACHE_FRACTION="0.5")


def test_a_started_engine_freezes_its_heap_and_thaws_it_at_shutdown():
    import asyncio
    import gc

    engine = AsyncEngine.from_config(load_settings(device="cpu", policy="none").engine_config())

    async def run() -> int:
        await engine.start()
        try:
            return gc.get_freeze_count()
        finally:
            await engine.shutdown()

    frozen = asyncio.run(run())
    assert frozen > 10_000  # the loaded model's modules, parameters and tables: out of full passes
    assert gc.get_freeze_count() == 0  # given back: a torn-down engine leaves nothing unreachable


def test_gc_passes_reach_the_metrics_without_the_callback_touching_prometheus():
    import gc
    import re

    from engine.api.metrics import GC_BUCKETS, Metrics
    from engine.frontend.heap import GCWatch

    metrics, watch = Metrics(), GCWatch(GC_BUCKETS)
    metrics.attach_gc(watch.passes)
    watch.install()
    try:
        gc.collect()  # a full pass
        gc.collect(0)
    finally:
        watch.remove()
    gc.collect()  # not counted: removed
    text = metrics.exposition()[0].decode()

    def sample(name: str) -> float:
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.M).group(1))

    assert sample('moe_gc_pause_seconds_count{generation="2"}') == 1
    assert sample('moe_gc_pause_seconds_count{generation="0"}') >= 1
    assert sample('moe_gc_pause_seconds_sum{generation="2"}') > 0
    inf = sample('moe_gc_pause_seconds_bucket{generation="2",le="+Inf"}')
    assert inf == 1 and sample('moe_gc_pause_seconds_bucket{generation="2",le="1e-05"}') <= inf


def test_the_host_clock_reaches_the_metrics_as_seconds_by_phase():
    """`moe_segmented_host_seconds_total{phase}` reads the runner's clock at scrape time: every phase, the
    seconds so far (a reset, as after the warm-up, starts them again)."""
    import re

    from engine.api.metrics import Metrics
    from engine.runner.host_clock import PHASES, HostClock

    metrics, clock = Metrics(), HostClock()
    metrics.attach_host_clock(lambda: clock.seconds)
    clock.seconds["route"] += 0.25
    clock.seconds["route_wait"] += 1.5

    def sample(phase: str) -> float:
        text = metrics.exposition()[0].decode()
        pattern = rf'^moe_segmented_host_seconds_total{{phase="{phase}"}} (\S+)$'
        return float(re.search(pattern, text, flags=re.M).group(1))

    assert sample("route") == 0.25 and sample("route_wait") == 1.5
    assert all(sample(p) == 0 for p in PHASES if p not in ("route", "route_wait"))
    clock.reset()
    assert sample("route") == 0
