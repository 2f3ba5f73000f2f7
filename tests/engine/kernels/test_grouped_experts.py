"""Decode-time experts from slots (GroupedExperts) against transformers' own eager experts, per family."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES
from interpreted import needs_triton, run_interpreted
from transformers import AutoModelForCausalLM

from engine.kernels.grouped_experts import GroupedExperts
from engine.model.loader import CacheBudget, load_checkpoint
from engine.model.model_map import find_moe_layers

T = 3  # tokens in the decode step


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_experts_match_the_eager_experts(family, checkpoints):
    ref = AutoModelForCausalLM.from_pretrained(checkpoints[family], dtype=torch.float32).eval()
    ref.set_experts_implementation("eager")
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0))
    cache = om.cache
    # A scrambled slot order, so slot != expert id: the slot table must be what finds the weights.
    experts = [(lay.index, e) for lay in om.layers for e in range(om.store.layout.num_experts)]
    order = torch.randperm(len(experts), generator=torch.Generator().manual_seed(1)).tolist()
    for i in order:
        cache.prefetch(experts[i][0], [experts[i][1]])
        cache.reset_prefetch()
    assert cache.holds_everything
    grouped = GroupedExperts(cache.weights, use_triton=False)
    gen = torch.Generator().manual_seed(0)
    for lay, ref_lay in zip(om.layers, find_moe_layers(ref), strict=True):
        num_experts, k = om.store.layout.num_experts, om.top_k
        hidden = torch.randn(T, ref.config.hidden_size, generator=gen)  # [T, D]
        idx = torch.stack([torch.randperm(num_experts, generator=gen)[:k] for _ in range(T)])  # [T, k]
        w = torch.rand(T, k, generator=gen)
        with torch.no_grad():
            want = ref_lay.experts(hidden, idx, w)
            got = grouped.forward(lay.experts, hidden, cache.slot_dev[lay.index], idx, w)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_triton
def test_slot_gemv_kernel_in_the_triton_interpreter(tmp_path):
    """The Triton kernels' indexing (slots, strides, transposed layout, edge blocks, the fused SiLU
    experts and RMSNorm), run by Triton's CPU interpreter; on a GPU they run in the gpu-marked tests."""
    code = (
        "import torch\n"
        "from engine.kernels.grouped_experts import slot_gemv, _gather_linear\n"
        "torch.manual_seed(0)\n"
        "for transposed in (False, True):\n"
        "    w = torch.randn(5, 300, 40) if transposed else torch.randn(5, 40, 300)\n"
        "    x, slots = torch.randn(6, 300), torch.tensor([4, 0, 2, 2, 1, 3])\n"
        "    torch.testing.assert_close(slot_gemv(x, w, slots, transposed),\n"
        "                               _gather_linear(x, w, slots, transposed), rtol=1e-4, atol=1e-4)\n"
        "from engine.kernels.grouped_experts import fused_silu_experts\n"
        "import torch.nn.functional as F\n"
        "gu, dn = torch.randn(6, 80, 72), torch.randn(6, 72, 40)\n"
        "table = torch.tensor([3, 0, 5, 1, 4], dtype=torch.int32)\n"
        "idx, w, x = torch.tensor([[1, 4], [0, 2], [3, 1]]), torch.rand(3, 2), torch.randn(3, 72)\n"
        "ref = torch.zeros(3, 72)\n"
        "for t in range(3):\n"
        "    for j in range(2):\n"
        "        s = int(table[idx[t, j]]); g, u = (gu[s] @ x[t]).chunk(2)\n"
        "        ref[t] += w[t, j] * (dn[s] @ (F.silu(g) * u))\n"
        "for up, down in (((16, 256, 4), ('fused', 16, 256, 4)), ((8, 32, 4), ('split', 8, 32, 4))):\n"
        "    got = fused_silu_experts(x, idx, w, table, gu, dn, up_cfg=up, down_cfg=down)\n"
        "    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)\n"
        "fused = fused_silu_experts(x, idx, w, table, gu, dn, down_cfg=('fused', 16, 32, 4))\n"
        "split = fused_silu_experts(x, idx, w, table, gu, dn, down_cfg=('split', 16, 32, 4))\n"
        "assert torch.equal(fused, split)  # same roundings, same order of the sum\n"
        "# experts without a slot (-1) read from the host copy, with the store's own row order\n"
        "host = (gu[table.long()].clone(), dn[table.long()].clone())  # [E, ...]: expert e's weights\n"
        "gone = table.clone(); gone[[1, 3]] = -1\n"
        "for down in (('fused', 16, 32, 4), ('split', 16, 32, 4)):\n"
        "    log = torch.full((6,), 7, dtype=torch.int32)\n"
        "    want = fused_silu_experts(x, idx, w, table, gu, dn, up_cfg=(16, 32, 4), down_cfg=down)\n"
        "    got = fused_silu_experts(x, idx, w, gone, gu, dn, up_cfg=(16, 32, 4), down_cfg=down,\n"
        "                             host=host, slot_log=log)\n"
        "    assert torch.equal(got, want), (got - want).abs().max()\n"
        "    assert log.tolist() == gone[idx.reshape(-1)].tolist(), log\n"
        "from engine.kernels.fused_norm import rms_norm\n"
        "x, wt = torch.randn(5, 3, 48), torch.rand(48)\n"
        "want = wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))\n"
        "torch.testing.assert_close(rms_norm(x, wt, 1e-6), want, rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)
