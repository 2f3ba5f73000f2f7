"""bench/host_path_cost.py on a few tokens of the Qwen3 twin (CPU): it replays the replayer's calls and
reports the time per layer-step, the copies and a profile."""

from __future__ import annotations

import pytest

from bench.host_path_cost import TWIN, measure


def test_the_host_path_replays_the_twins_routing_through_the_cache():
    r = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=2)
    assert r["layers"] == 48 and r["experts"] == 128 and r["slots"] == 3072
    assert len(r["us_per_layer"]) == 2 and r["us_per_layer_median"] > 0
    assert 8 <= r["copies_per_token"] <= 48 * 8  # a cold cache copies at least one expert a layer at first
    assert any("prefetch" in row["function"] for row in r["profile_top_own_time"])


def test_each_policy_prefetches_what_it_names():
    none = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=1, policy="none")
    assert not any("prefetch" in row["function"] for row in none["profile_top_own_time"])
    oracle = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=1, policy="oracle+1")
    assert oracle["prefetch_wasted_per_token"] == 0  # the routed set itself: every guess is used
    trained = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=1, policy="exact+2")
    assert trained["prefetch_wasted_per_token"] > 0 and trained["policy"] == "exact+2"
    # with nothing predicted every miss is a demand copy; a prediction moves some of them ahead
    assert none["copies_per_token"] <= trained["copies_per_token"]


@pytest.mark.gpu
def test_on_a_gpu_the_caches_cuda_calls_are_timed_too():
    """--device cuda: the same replay through a cache on the GPU (a page-locked store, real copies, events
    and stream waits); its profile shows the CUDA side (the copies' launches, the events)."""
    import torch

    r = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=1, policy="exact+2", device="cuda")
    assert r["device"] == torch.cuda.get_device_name() and r["us_per_layer_median"] > 0
    assert r["prefetch_wasted_per_token"] > 0
    assert len(r["profile_top_own_time"]) == 12
