"""The fused RoPE on CUDA (skipped without a GPU): installed for the rotate_half families in float32 and
bfloat16 and left alone elsewhere, bit-equal to transformers' function on a real model's head shape,
used by the runner's own forwards only, and the runner's tokens unchanged."""

from __future__ import annotations

import sys

import pytest
import torch
from families import greedy_reference
from transformers.models.glm4_moe import modeling_glm4_moe
from transformers.models.qwen3_moe import modeling_qwen3_moe

import engine.model.patch_rope as rope
from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
NEW = 12
ROTATE_HALF = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe"]


@pytest.fixture(autouse=True)
def unpatched():
    rope.uninstall_fused_rope()  # runners of earlier tests installed it
    yield
    rope.uninstall_fused_rope()


def modeling_module(om):
    return sys.modules[type(om.model).__module__]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ROTATE_HALF)
def test_installed_for_the_rotate_half_families(family, dtype, checkpoints):
    om = load_checkpoint(checkpoints[family], CUDA, dtype, CacheBudget(fraction=1.0))
    module = modeling_module(om)
    original = module.apply_rotary_pos_emb
    assert rope.install_fused_rope(om.model)
    wrapper = module.apply_rotary_pos_emb
    assert wrapper is not original and wrapper.__wrapped__ is original
    assert wrapper._rope_patch.allows(dtype, partial=False)
    assert rope.install_fused_rope(om.model) and module.apply_rotary_pos_emb is wrapper  # twice: harmless
    rope.uninstall_fused_rope()
    assert module.apply_rotary_pos_emb is original


@pytest.mark.parametrize("family", ["deepseek_v2", "gpt_oss"])
def test_other_forms_are_left_alone(family, checkpoints):
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=1.0))
    module = modeling_module(om)
    before = getattr(module, "apply_rotary_pos_emb", None)
    assert not rope.install_fused_rope(om.model)
    assert getattr(module, "apply_rotary_pos_emb", None) is before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_is_bit_exact_on_cuda(dtype):
    """Qwen3-30B-A3B's attention shape (32 q heads, 4 kv heads, head 128), decode and prefill lengths."""
    gen = torch.Generator(device=CUDA).manual_seed(0)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 128, 2, device=CUDA, dtype=torch.float32) / 128))
    patch = rope.patch_module(modeling_qwen3_moe)
    assert patch.check(dtype, CUDA, 128, 32, 4) and patch.allows(dtype, partial=False)
    for t in (1, 7):
        q = (3 * torch.randn(2, t, 32, 128, generator=gen, device=CUDA)).to(dtype).transpose(1, 2)
        k = (3 * torch.randn(2, t, 4, 128, generator=gen, device=CUDA)).to(dtype).transpose(1, 2)
        pos = torch.randint(0, 4000, (2, t), generator=gen, device=CUDA).float()
        angle = pos[..., None] * inv_freq
        full = torch.cat((angle, angle), dim=-1)
        part = torch.cat((angle[..., :32], angle[..., :32]), dim=-1)
        cases = [
            (patch.original, full.cos().to(dtype), full.sin().to(dtype)),
            (modeling_glm4_moe.apply_rotary_pos_emb, part.cos().to(dtype), part.sin().to(dtype)),
        ]
        for fn, cos, sin in cases:
            want = fn(q, k, cos, sin)
            got = rope.fused_rope(q, k, cos, sin)
            for g, w in zip(got, want, strict=True):
                assert g.dtype == w.dtype and torch.equal(g, w), (dtype, t, (g != w).sum().item())
        with rope.fused_rope_active():  # the installed wrapper, switched on
            got = modeling_qwen3_moe.apply_rotary_pos_emb(q, k, cases[0][1], cases[0][2])
        for g, w in zip(got, patch.original(q, k, cases[0][1], cases[0][2]), strict=True):
            assert torch.equal(g, w)


@pytest.mark.parametrize("family", ROTATE_HALF)
def test_runner_uses_the_kernel_only_in_its_own_forwards(family, checkpoints, references, monkeypatch):
    prompt = references[family][0]
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=1.0))
    assert om.cache.load_all()
    runner = ModelRunner(om, rows=2)
    assert runner.fused_rope
    calls = []
    kernel = rope.fused_rope
    monkeypatch.setattr(rope, "fused_rope", lambda *args: calls.append(1) or kernel(*args))
    tokens = runner.greedy(prompt, NEW)
    torch.cuda.synchronize()
    assert runner.graph_failure is None and runner.steps["captures"] >= 1
    assert len(calls) >= 2 * om.model.config.num_hidden_layers  # prefill and the first (eager) decode step
    seen = len(calls)
    assert tokens == greedy_reference(checkpoints[family], prompt, NEW, device="cuda")
    assert len(calls) == seen  # the plain transformers model in the same process never ran it


def test_bf16_runner_tokens_do_not_depend_on_the_fused_rope(checkpoints, references):
    prompt = references["qwen3_moe"][0]
    tokens = {}
    for fused in (True, False):
        om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.bfloat16, CacheBudget(fraction=1.0))
        runner = ModelRunner(om)
        assert runner.fused_rope
        runner.fused_rope = fused  # the switch the runner turns on around its forwards
        tokens[fused] = runner.greedy(prompt, NEW)
        torch.cuda.synchronize()
    assert tokens[True] == tokens[False]
