"""bench/host_path_cost.py on a few tokens of the Qwen3 twin (CPU): it replays the replayer's calls and
reports the time per layer-step, the copies and a profile."""

from __future__ import annotations

from bench.host_path_cost import TWIN, measure


def test_the_host_path_replays_the_twins_routing_through_the_cache():
    r = measure(TWIN, 0.5, "lfu", tokens=3, warm=3, reps=2)
    assert r["layers"] == 48 and r["experts"] == 128 and r["slots"] == 3072
    assert len(r["us_per_layer"]) == 2 and r["us_per_layer_median"] > 0
    assert 8 <= r["copies_per_token"] <= 48 * 8  # a cold cache copies at least one expert a layer at first
    assert any("prefetch" in row["function"] for row in r["profile_top_own_time"])
