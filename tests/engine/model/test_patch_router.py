"""The fused router patch: nothing changes where the kernel cannot run. On a GPU,
tests/engine/model/test_patch_router_gpu.py checks which routers it takes over."""

from __future__ import annotations

import torch
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from engine.model.patch_router import fuse_routers


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
