"""The slot kernels' autotuner keeps one configuration per shape for the whole process: configurations
sum in different orders, so a shape that changed configuration between steps could flip a greedy token
(measured on the H200: a Qwen3-30B-A3B-shape decode whose first graphs were captured before their
segmented kernels were tuned differed from the later runs at one token of 96)."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import autotune


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device as far as `_tuned` asks, capturing or not as the test sets `state['capturing']`, and
    a clock that makes the second config the fastest."""
    state = {"capturing": False, "timed": []}
    monkeypatch.setattr(autotune, "_best", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])

    def gpu_time_ms(run, reps=10):
        cfg = run()
        state["timed"].append(cfg)
        return 1.0 if cfg == autotune.CONFIGS[1] else 2.0

    monkeypatch.setattr(autotune, "gpu_time_ms", gpu_time_ms)
    return state


def test_a_shape_is_timed_once_and_keeps_the_fastest(fake_gpu):
    assert autotune._tuned(("k", 1), lambda c: c) == autotune.CONFIGS[1]
    assert fake_gpu["timed"] == list(autotune.CONFIGS)
    assert autotune._tuned(("k", 1), lambda c: c) == autotune.CONFIGS[1]
    assert len(fake_gpu["timed"]) == len(autotune.CONFIGS)  # not timed again


def test_a_shape_first_met_in_a_capture_keeps_the_first_config_after_it(fake_gpu):
    fake_gpu["capturing"] = True
    assert autotune._tuned(("k", 2), lambda c: c) == autotune.CONFIGS[0]
    fake_gpu["capturing"] = False
    # the eager steps after the capture compute what the captured graph computes: no timing, same config
    assert autotune._tuned(("k", 2), lambda c: c) == autotune.CONFIGS[0]
    assert fake_gpu["timed"] == []
