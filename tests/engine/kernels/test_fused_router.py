"""The fused router kernel (softmax, top-k, renormalisation) in Triton's CPU interpreter, and that
nothing changes where it cannot run. On a GPU, tests/engine/kernels/test_fused_router_gpu.py checks it against
transformers' routers, ties included."""

from __future__ import annotations

import torch
from interpreted import needs_triton, run_interpreted
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from engine.kernels.fused_router import fuse_routers

SCRIPT = """
import torch
from engine.kernels.fused_router import softmax_topk
torch.manual_seed(0)
for e, k in ((128, 8), (64, 6), (8, 2), (60, 3)):
    logits = torch.randn(5, e)
    logits[3] = torch.randint(0, 3, (e,)).float()  # ties
    logits[4] = 0.0  # all equal
    vals, idx = softmax_topk(logits, k, norm=False)
    p = torch.softmax(logits, -1)
    for r in range(5):
        order = sorted(range(e), key=lambda i: (-p[r, i].item(), i))[:k]  # ties: lowest id first
        assert idx[r].tolist() == order, (e, k, r, idx[r].tolist(), order)
        torch.testing.assert_close(vals[r], p[r, order], rtol=1e-6, atol=1e-7)
    normed, idx2 = softmax_topk(logits, k, norm=True)
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(normed, vals / vals.sum(-1, keepdim=True), rtol=1e-6, atol=1e-7)
print("ok")
"""


@needs_triton
def test_softmax_topk_kernel_in_the_triton_interpreter(tmp_path):
    run_interpreted(tmp_path, SCRIPT, timeout=300)


def test_routers_on_the_cpu_keep_their_own_forward():
    cfg = Qwen3MoeConfig(hidden_size=32, num_experts=16, num_experts_per_tok=4, norm_topk_prob=True)
    router = Qwen3MoeTopKRouter(cfg)
    torch.nn.init.normal_(router.weight)
    model = torch.nn.Sequential(router)
    x = torch.randn(3, 32)
    before = router(x)
    assert fuse_routers(model) == 0
    assert "forward" not in router.__dict__
    for a, b in zip(before, router(x), strict=True):
        assert torch.equal(a, b)
