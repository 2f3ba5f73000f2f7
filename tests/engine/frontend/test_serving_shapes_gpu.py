"""Decode steps as the server runs them (skipped without a GPU): sequences of different lengths join and
leave between steps, so step shapes are padded (5 real rows in an 8-row graph), rows move, and positions
cross KV buckets mid-batch; at every cache size down to the minimum, streamed and segmented, with and
without prefetch. Every sequence must get exactly the tokens the unmodified transformers model gives it
alone. (The GPU serving crash at the eighth concurrent request was a padded segmented step reading an
expert with no slot; run this file under compute-sanitizer's memcheck to see any such read.)"""

from __future__ import annotations

import pytest
import torch
from families import greedy_reference

from engine.api.config import EngineConfig
from engine.model.loader import CacheBudget, load_checkpoint
from engine.prefetch.build import build_prefetcher
from engine.prefetch.nets import PredictorBank
from engine.runner.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
MIN = 1e-9  # the smallest cache: top-k slots


def workload(count: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt, tokens to generate): prompts of 3 to 70 tokens, so some rows cross the 64-position bucket
    while others do not, and lengths of 4 to 14 tokens, so rows leave at different steps."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(3, 71, (1,), generator=gen))
        out.append(
            (
                torch.randint(3, 300, (n,), generator=gen).tolist(),
                int(torch.randint(4, 15, (1,), generator=gen)),
            )
        )
    return out


def serve(runner: ModelRunner, work: list[tuple[list[int], int]], joins_per_round: int) -> list[list[int]]:
    """What the async engine does: each round admits up to `joins_per_round` newcomers into the next free
    rows (prefill), runs one decode step over rows 0..n-1, and frees finished rows by moving the last row
    into the hole."""
    waiting = list(range(len(work)))
    rows: list[dict] = []  # rows[j] decodes in KV row j
    done: dict[int, list[int]] = {}
    while waiting or rows:
        for _ in range(joins_per_round):
            if waiting and len(rows) < runner.rows:
                i = waiting.pop(0)
                logits = runner.prefill(len(rows), work[i][0])
                rows.append({"i": i, "pos": len(work[i][0]), "out": [int(torch.argmax(logits))]})
        logits = runner.decode([r["out"][-1] for r in rows], [r["pos"] for r in rows])
        for j, r in enumerate(rows):
            r["out"].append(int(torch.argmax(logits[j])))
            r["pos"] += 1
        j = 0
        while j < len(rows):
            r = rows[j]
            if len(r["out"]) < work[r["i"]][1]:
                j += 1
                continue
            done[r["i"]] = r["out"]
            last = len(rows) - 1
            if j != last:
                runner.move_row(last, j, rows[last]["pos"])
                rows[j] = rows[last]
            rows.pop()
        runner.after_step()
    torch.cuda.synchronize()
    runner.after_step()
    return [done[i] for i in range(len(work))]


@pytest.fixture(scope="module")
def solo(checkpoints):
    """family -> the workload's tokens, each sequence alone through the unmodified transformers model."""
    cache = {}

    def get(family: str, work):
        key = (family, len(work))
        if key not in cache:
            cache[key] = [greedy_reference(checkpoints[family], p, n, device="cuda") for p, n in work]
        return cache[key]

    return get


@pytest.mark.parametrize("host_reads", [True, False], ids=["streamed", "segmented"])
@pytest.mark.parametrize(
    "fraction", [1.0, 0.5, 0.25, MIN], ids=["cache100", "cache50", "cache25", "cachemin"]
)
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "mixtral"])
def test_joining_and_leaving_rows_give_solo_tokens(family, fraction, host_reads, checkpoints, solo):
    work = workload(14, seed=11)
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=fraction))
    runner = ModelRunner(om, rows=8, host_reads=host_reads)
    got = serve(runner, work, joins_per_round=3)
    assert runner.graph_failure is None
    assert runner.steps["graph"] > 0 or (fraction == MIN and not runner.streams)  # minimum: eager segmented
    assert got == solo(family, work)
    c = om.counters.totals()
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]


@pytest.mark.parametrize("rows", [16, 32])
@pytest.mark.parametrize("host_reads", [True, False], ids=["streamed", "segmented"])
def test_wide_batches(rows, host_reads, checkpoints, solo):
    work = workload(rows + rows // 2, seed=rows)
    om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=0.5))
    runner = ModelRunner(om, rows=rows, host_reads=host_reads)
    assert serve(runner, work, joins_per_round=rows // 3) == solo("qwen3_moe", work)
    assert runner.graph_failure is None and runner.steps["graph"] > 0


@pytest.mark.parametrize("policy", ["exact", "overprovision"])
@pytest.mark.parametrize("host_reads", [True, False], ids=["streamed", "segmented"])
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_prefetch_policies_with_joining_rows(policy, fraction, host_reads, checkpoints, solo):
    work = workload(14, seed=11)
    om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=fraction))
    torch.manual_seed(0)
    bank = PredictorBank(
        2, om.model.config.hidden_size, om.store.layout.num_experts, len(om.layers), hidden=32
    )
    pf = build_prefetcher(
        om, EngineConfig(policy=policy), bank=bank.to(CUDA).eval(), manifest={"loss": "wbce"}
    )
    try:
        runner = ModelRunner(om, rows=8, host_reads=host_reads)
        got = serve(runner, work, joins_per_round=3)
    finally:
        pf.remove()
    assert runner.graph_failure is None and runner.steps["graph"] > 0
    assert got == solo("qwen3_moe", work)
    assert om.counters.totals()["prefetch_issued"] > 0
