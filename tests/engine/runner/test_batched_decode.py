"""Batched decode over KV rows gives every sequence the tokens it gets alone, for every family;
a finished sequence's row is refilled by moving the last row, and decoding goes on unchanged."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES

from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.runner import ModelRunner

NEW = 10
MIN = 1e-9  # the smallest cache: top-k slots, so a batch's experts arrive in chunks


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (5, 11, 8)]


@pytest.mark.parametrize("fraction", [1.0, MIN], ids=["cache100", "cachemin"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_decode_equals_each_sequence_alone(family, fraction, checkpoints):
    cpu = torch.device("cpu")
    om = load_checkpoint(checkpoints[family], cpu, torch.float32, CacheBudget(fraction=fraction))
    solo_runner = ModelRunner(om)
    solo = [solo_runner.greedy(p, NEW) for p in prompts()]

    runner = ModelRunner(om, rows=3)
    seqs = []  # [prompt length + generated so far, tokens]
    for row, p in enumerate(prompts()):
        logits = runner.prefill(row, p)
        seqs.append({"pos": len(p), "out": [int(torch.argmax(logits))], "id": row})
    live = list(seqs)  # live[i] decodes in row i
    for step in range(NEW - 1):
        if step == 4:  # the middle sequence leaves; the last row moves into its place
            gone = live.pop(1)
            runner.move_row(src=2, dst=1, length=live[1]["pos"])
            assert gone["id"] == 1
        logits = runner.decode([s["out"][-1] for s in live], [s["pos"] for s in live])
        assert logits.shape[0] == len(live)
        for i, s in enumerate(live):
            s["out"].append(int(torch.argmax(logits[i])))
            s["pos"] += 1
    assert seqs[0]["out"] == solo[0]
    assert seqs[2]["out"] == solo[2]
    assert seqs[1]["out"] == solo[1][: len(seqs[1]["out"])]
    c = om.counters.totals()
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]


def test_decode_checks_its_limits(checkpoints):
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0)
    )
    runner = ModelRunner(om, rows=2, max_len=16)
    runner.prefill(0, [5, 6, 7])
    with pytest.raises(ValueError, match="runner has 2"):
        runner.decode([1, 2, 3], [3, 3, 3])
    with pytest.raises(ValueError, match="past the KV cache"):
        runner.decode([1], [16])
