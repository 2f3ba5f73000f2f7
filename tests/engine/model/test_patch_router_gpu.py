"""The fused router on CUDA (skipped without a GPU): it takes over the routers it reproduces, ties
included, leaves the others alone, and the runner still gives the reference tokens."""

from __future__ import annotations

import pytest
import torch
from families import greedy_reference

from engine.model.loader import CacheBudget, load_checkpoint
from engine.model.patch_router import _variant, fuse_routers
from engine.runner.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe"])
def test_top_k_routers_are_fused_and_give_the_reference_tokens(family, dtype, checkpoints, references):
    om = load_checkpoint(checkpoints[family], CUDA, dtype, CacheBudget(fraction=1.0))
    routers = [m for m in om.model.modules() if type(m).__name__.endswith("Router")]
    assert routers and _variant(routers[0]) is not None
    runner = ModelRunner(om, rows=2)
    assert runner.fused_routers == len(routers)
    if dtype == torch.float32:
        prompt = references[family][0]
        assert om.cache.load_all()
        assert runner.greedy(prompt, 8) == greedy_reference(checkpoints[family], prompt, 8, device="cuda")


class SigmoidTopKRouter(torch.nn.Module):
    """Sigmoid scores (as DeepSeek-V3 routes): not what the kernel computes."""

    def __init__(self) -> None:
        super().__init__()
        self.top_k = 2
        self.weight = torch.nn.Parameter(torch.randn(16, 32, device="cuda"))

    def forward(self, hidden_states):
        logits = torch.nn.functional.linear(hidden_states.reshape(-1, 32), self.weight)
        scores, idx = torch.topk(logits.sigmoid(), self.top_k, dim=-1)
        return logits, scores, idx


def test_a_router_of_another_kind_keeps_its_forward():
    router = SigmoidTopKRouter()
    assert fuse_routers(torch.nn.Sequential(router)) == 0
    assert "forward" not in router.__dict__
