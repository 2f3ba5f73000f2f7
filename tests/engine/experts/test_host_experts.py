"""Hybrid misses (`engine.experts.host_experts`, `MOE_HYBRID_MISSES`): which misses the host takes, the
redirect of their pairs on the device, the host's output, and the whole decode against transformers on
every family (CPU: the "host" and the "device" are the same processor, so this checks the arithmetic and
the accounting, not the speed; the rates are set so that the host takes every miss it may)."""

from __future__ import annotations

import time

import pytest
import torch
from families import FAMILIES

from engine.experts.host_experts import HostExperts, HybridRates, calibrate, redirect, timed_median_ms
from engine.model.loader import CacheBudget, load_checkpoint
from engine.model.offload import _expert_mlp, host_experts
from engine.runner.runner import ModelRunner

NEW = 16
MIN = 1e-9  # the minimum cache: top-k slots


def test_choose_balances_copies_against_the_host():
    he = HostExperts(None, HybridRates(copy_ms=0.17, host_ms=0.31), _expert_mlp)
    rows = {e: 1 for e in range(10)}
    assert he.choose([1], rows, routed=8) == []  # one miss: copying it (0.17) beats computing it (0.31)
    # 3 misses: copy 2 and compute 1 (max(0.34, 0.31)) beats copying 3 (0.51); a second costs 0.62
    assert he.choose([4, 2, 7], rows, routed=8) == [2]
    # 8 misses: 3 on the host, max(5 x 0.17, 3 x 0.31) = 0.93 ms, against 1.02 with 2 and 1.24 with 4
    assert len(he.choose(list(range(8)), rows, routed=8)) == 3
    # the fewest routed rows first (batch > 1): the host's time grows with the rows
    assert he.choose([3, 5, 6], {3: 4, 5: 1, 6: 2}, routed=6) == [5]


def test_choose_leaves_one_routed_expert_on_the_device():
    he = HostExperts(None, HybridRates(copy_ms=1.0, host_ms=0.001), _expert_mlp)
    assert he.choose([0, 1, 2], {0: 1, 1: 1, 2: 1}, routed=3) == [0, 1]  # every routed expert missed
    assert he.choose([0, 1], {0: 1, 1: 1}, routed=4) == [0, 1]  # two routed experts are resident


def test_redirect_sends_the_hosts_pairs_to_a_device_expert_at_weight_zero():
    ids = torch.tensor([[3, 5], [5, 1]])
    w = torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    got_ids, got_w = redirect(ids, w, [5], to=3)
    assert got_ids.tolist() == [[3, 3], [3, 1]]
    assert torch.equal(got_w, torch.tensor([[0.6, 0.0], [0.0, 0.3]]))


def test_calibration_times_only_after_the_warm_up():
    """A process's first calls run slow for a while (14 ms against 0.33 ms a row on the H200's host): the
    calls of the first `warm_s` seconds are not timed."""
    start = time.perf_counter()

    def slow_at_first(i: int) -> None:
        if time.perf_counter() - start < 0.05:
            time.sleep(0.01)

    assert timed_median_ms(slow_at_first, reps=5, warm_s=0.1) < 5.0
    assert timed_median_ms(lambda i: time.sleep(0.002), reps=3, warm_s=0.0) >= 2.0


def test_calibrate_measures_positive_rates(checkpoints):
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    r = calibrate(om.store, _expert_mlp, om.layers[0].experts, int(om.model.config.hidden_size), om.device)
    assert r.copy_ms > 0 and r.host_ms > 0
    he = host_experts(om.store, om.layers, int(om.model.config.hidden_size), om.device)
    assert he.rates.copy_ms > 0


@pytest.mark.parametrize("fraction", [0.5, MIN], ids=["cache50", "cachemin"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_decode_gives_the_reference_tokens(family, fraction, checkpoints, references):
    prompt, _, ref_tokens = references[family]
    om = load_checkpoint(
        checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction)
    )
    hybrid = HostExperts(om.store, HybridRates(copy_ms=1.0, host_ms=1e-4), _expert_mlp)  # the host takes all
    runner = ModelRunner(om, hybrid=hybrid)
    assert runner.greedy(prompt, NEW) == ref_tokens
    c = om.counters.totals()
    assert c["host_computed"] > 0  # the decode steps' misses went to the host
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]
    # a miss the host computed copied nothing; every other miss copied one expert
    assert c["bytes_demand"] == (c["misses"] - c["host_computed"]) * om.store.layout.nbytes
    # the host's own time is counted per layer-step it took misses in, and its pairs per expert computed
    spent = hybrid.spent
    assert spent.experts == c["host_computed"] and spent.layer_steps <= spent.experts <= spent.pairs
    assert 0 < spent.output_s <= spent.route_s
    s = spent.summary(NEW, hybrid.rates)
    assert s["experts_per_token"] == pytest.approx(spent.experts / NEW)
    assert s["output_ms_per_pair"] == pytest.approx(1e3 * spent.output_s / spent.pairs)
    spent.reset()
    assert (spent.experts, spent.output_s) == (0, 0.0)
