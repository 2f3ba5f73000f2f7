"""A decode step padded to a larger shape (5 real rows in an 8-row graph) asks the cache for the real rows'
experts only, and computes the padding rows with those experts.

The padding rows attend over their own KV rows, which hold an earlier sequence's keys, so their routers
pick other experts; a segmented CUDA-graph step makes only the real rows' experts resident, and its kernels
then read an expert with no slot out of bounds (the GPU serving crash at the eighth concurrent request).
On the CPU the same padded step runs eagerly (it is what a GPU runs right before capturing the shape)."""

from __future__ import annotations

import pytest
import torch

from engine.experts.hooks import Listener
from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.runner import ModelRunner
from engine.runner.step_choice import pads


def test_which_step_shapes_can_be_padded():
    assert [b for b in (1, 2, 4, 8, 16) if pads(b, rows=16)] == [4, 8, 16]  # shapes are powers of two
    assert pads(6, rows=6) and not pads(3, rows=3)  # capped at the row count: 5 rows run as 6, 2 as 2


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_padding_rows_route_as_row_zero(family, checkpoints):
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5))
    runner = ModelRunner(om, rows=8)
    gen = torch.Generator().manual_seed(7)
    # every row holds a sequence first, so the padding rows' KV rows are full of other keys
    for row in range(8):
        runner.prefill(row, torch.randint(3, 300, (12 + row,), generator=gen).tolist())
    tokens = [11, 23, 35, 47, 59]
    positions = [12, 13, 14, 15, 16]
    seen: list[tuple[int, list[int]]] = []
    om.cache.listen(Listener(route=lambda layer, ids: seen.append((layer, sorted(ids)))))
    with torch.inference_mode():
        exact = runner._decode_eager(tokens, positions, 5, 64)  # 5 rows, no padding
        alone, seen[:] = list(seen), []
        padded = runner._decode_eager(tokens, positions, 8, 64)  # the same 5 rows in an 8-row step
    assert seen == alone  # the cache was asked for exactly the real rows' experts, layer by layer
    # and the real rows are unchanged, to float32 rounding: a CPU GEMM may block a 5-row and an 8-row product
    # differently (seen on AMD EPYC: 1e-6 apart), where rows mixing into each other would differ by O(1)
    torch.testing.assert_close(padded[:5], exact, rtol=1e-5, atol=1e-5)
