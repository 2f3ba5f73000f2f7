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
