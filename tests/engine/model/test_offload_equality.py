"""Offloading never changes outputs: every family, cache at 100%, 50% and the minimum, both eviction orders
(`MOE_EVICTION` lru and lfu), against the unmodified transformers model loaded from the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES

from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.runner import ModelRunner

NEW = 16
MIN = 1e-9  # any fraction this small resolves to the minimum cache: top-k slots


CASES = [(1.0, "lru"), (0.5, "lru"), (MIN, "lru"), (0.5, "lfu"), (MIN, "lfu")]


@pytest.mark.parametrize(
    ("fraction", "eviction"), CASES, ids=["cache100", "cache50", "cachemin", "cache50-lfu", "cachemin-lfu"]
)
@pytest.mark.parametrize("family", FAMILIES)
def test_same_logits_and_greedy_tokens(family, fraction, eviction, checkpoints, references):
    prompt, ref_logits, ref_tokens = references[family]
    om = load_checkpoint(
        checkpoints[family],
        torch.device("cpu"),
        torch.float32,
        CacheBudget(fraction=fraction, eviction=eviction, lfu_half_life=4.0),
    )
    if fraction == MIN:
        assert om.cache.capacity == om.top_k
    with torch.no_grad():
        logits = om.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert ModelRunner(om).greedy(prompt, NEW) == ref_tokens
    c = om.counters.totals()
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]
    assert c["misses"] >= om.store.layout.num_experts  # every expert came through the cache at least once...
    assert c["bytes_demand"] == c["misses"] * om.store.layout.nbytes  # ...and each miss copied one expert


def test_no_expert_weights_left_in_the_model(checkpoints):
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    for layer in om.layers:
        assert layer.experts.gate_up_proj.is_meta and layer.experts.down_proj.is_meta
    expert_bytes = om.store.nbytes
    assert expert_bytes == om.store.total_experts * om.store.layout.nbytes
    assert om.cache.pool.numel() * om.cache.pool.element_size() == om.cache.capacity * om.store.layout.nbytes


@pytest.mark.parametrize("fraction", [1.0, 0.5, MIN], ids=["cache100", "cache50", "cachemin"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_latent_attention_with_fewer_kv_heads(kv_heads, fraction, tmp_path):
    """DeepSeek-V2 configs may say fewer KV heads than query heads (transformers accepts any divisor); its
    latent attention still has one key head per query head. The engine must start and match transformers."""
    from families import greedy_reference, write_checkpoint

    path = write_checkpoint("deepseek_v2", tmp_path / "ds", num_key_value_heads=kv_heads)
    prompt = [5, 17, 42, 9, 100, 7]
    ref = greedy_reference(path, prompt, NEW)
    om = load_checkpoint(path, torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction))
    runner = ModelRunner(om, rows=2)
    runner.allocate()  # the start-up step that failed: a one-token prefill with the static KV cache's mask
    assert runner.greedy(prompt, NEW) == ref
