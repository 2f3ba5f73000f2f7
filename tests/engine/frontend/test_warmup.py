"""MOE_WARMUP_TOKENS: the start-up warm-up runs every decode batch size, changes no output and is counted
nowhere (cache counters, step counts, prediction latencies, a recorded routing)."""

from __future__ import annotations

import pytest
import torch

import engine.frontend.startup as startup
from engine.api.errors import EngineError
from engine.frontend.async_engine import AsyncEngine
from engine.frontend.warmup import batch_sizes, warmup_default
from moe_prefetch.settings import load_settings

PROMPT = "The capital of France is"


def _loaded(monkeypatch, policy: str = "exact", **env) -> AsyncEngine:
    env = {"MOE_EXPERT_CACHE_FRACTION": "0.5", "MOE_MAX_RUNNING": "3", **env}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    engine = AsyncEngine.from_config(load_settings(device="cpu", policy=policy).engine_config())
    engine.load()
    return engine


def test_the_batch_sizes_are_the_runners_buckets():
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4, 6]  # a step of 5 rows runs the 6-row bucket
    assert warmup_default(torch.device("cuda")) == 4 and warmup_default(torch.device("cpu")) == 0


def test_a_warm_up_runs_every_batch_size_and_leaves_no_count(monkeypatch, tmp_path, caplog):
    seen = []
    real = startup.warm_up

    def recording(runner, ids, tokens):
        done = real(runner, ids, tokens)
        seen.append((done, sum(runner.om.counters.requests), dict(runner.steps)))
        return done

    monkeypatch.setattr(startup, "warm_up", recording)
    caplog.set_level("INFO", logger="engine.frontend.startup")
    warm = _loaded(monkeypatch, MOE_WARMUP_TOKENS="2", MOE_RECORD_ROUTING=str(tmp_path / "routing.json"))
    ((done, requests, steps),) = seen
    assert done["batches"] == [1, 2, 3] and done["decode_steps"] == 6
    assert requests > 0 and steps["eager"] == 6  # it did route experts and run steps ...
    totals = warm.om.counters.totals()
    assert set(totals.values()) == {0}, totals  # ... and none of it is counted
    assert warm.om.counters.slots_used > 0  # the experts it brought stay cached
    assert warm.runner.steps == {"graph": 0, "eager": 0, "captures": 0, "streamed": 0, "segmented": 0}
    assert warm.recorder is not None and warm.recorder.steps() == 0
    body = warm.metrics_exposition()[0].decode()
    assert "moe_prediction_latency_seconds_count 0.0" in body
    assert any("warm-up: 6 decode steps at batch sizes [1, 2, 3]" in r.getMessage() for r in caplog.records)

    cold = _loaded(monkeypatch, MOE_WARMUP_TOKENS="0", MOE_RECORD_ROUTING="")
    ids = warm.tokenizer.encode(PROMPT)
    assert warm.runner.greedy(ids, 8) == cold.runner.greedy(ids, 8)  # the same tokens either way


def test_the_cpu_default_is_no_warm_up_and_a_short_context_still_fits(monkeypatch):
    calls = []
    monkeypatch.setattr(startup, "warm_up", lambda *a: calls.append(a) or {})
    _loaded(monkeypatch, policy="none")
    assert calls == []  # unset on the CPU: 0
    monkeypatch.undo()
    short = _loaded(monkeypatch, policy="none", MOE_WARMUP_TOKENS="4", MOE_MAX_MODEL_LEN="16")
    assert short.runner.max_len == 16 and set(short.om.counters.totals().values()) == {0}


def test_a_failing_warm_up_fails_the_start_with_a_clear_error(monkeypatch):
    def broken(*_args):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(startup, "warm_up", broken)
    with pytest.raises(EngineError, match=r"warm-up at start \(MOE_WARMUP_TOKENS=2\) failed: RuntimeError"):
        _loaded(monkeypatch, policy="none", MOE_WARMUP_TOKENS="2")
