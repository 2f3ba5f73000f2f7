"""The fused router kernel (softmax, top-k, renormalisation) in Triton's CPU interpreter. Its patch into
transformers' routers: tests/engine/model/test_patch_router.py; on a GPU,
tests/engine/model/test_patch_router_gpu.py checks it against transformers' routers, ties included."""

from __future__ import annotations

from interpreted import needs_triton, run_interpreted

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
