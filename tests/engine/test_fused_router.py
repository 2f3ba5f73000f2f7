"""The fused router kernel (softmax, top-k, renormalisation) in Triton's CPU interpreter, and that
nothing changes where it cannot run. On a GPU, tests/engine/test_fused_router_gpu.py checks it against
transformers' routers, ties included."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from engine.fused_router import fuse_routers

SCRIPT = """
import torch
from engine.fused_router import softmax_topk
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


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU-only torch)"
)
def test_softmax_topk_kernel_in_the_triton_interpreter(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


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
