"""The CUDA prefetch path: side stream, worker thread, single-token CUDA graphs (skipped without a GPU).

Outputs must equal the unmodified transformers model on the same GPU, with copies really issued by
the worker, and the threaded path must agree exactly with the inline one.
"""

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
NEW = 16


def reference(checkpoint, prompt: list[int]) -> list[int]:
    return greedy_reference(checkpoint, prompt, NEW, device="cuda")


@pytest.mark.parametrize("policy", ["exact", "overprovision", "adaptive", "crosslayer"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "mixtral"])
def test_threaded_prefetch_on_cuda_keeps_outputs(family, policy, checkpoints, references):
    prompt = references[family][0]
    expected = reference(checkpoints[family], prompt)
    tokens, counts = {}, {}
    for threaded in (True, False):
        om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=0.5))
        torch.manual_seed(0)
        bank = PredictorBank(
            2, om.model.config.hidden_size, om.store.layout.num_experts, len(om.layers), hidden=32
        )
        bank = bank.to(CUDA).eval()
        pf = build_prefetcher(
            om, EngineConfig(policy=policy), bank=bank, manifest={"loss": "wbce"}, threaded=threaded
        )
        assert pf.threaded is threaded
        if threaded:
            assert len(pf._graphs) > 0
        tokens[threaded] = ModelRunner(om).greedy(prompt, NEW)
        torch.cuda.synchronize()
        counts[threaded] = om.counters.totals()
        pf.remove()
        assert counts[threaded]["prefetch_issued"] > 0
        assert om.cache.pinned_slots() == 0 or policy == "crosslayer"
    assert tokens[True] == expected
    assert tokens[False] == expected
    assert counts[True] == counts[False]  # same predictions, same cache decisions
