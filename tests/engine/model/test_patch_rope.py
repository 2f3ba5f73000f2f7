"""The fused RoPE patch: inert wherever the runner is not running on a GPU (no Triton needed), and its
install check, which accepts the forms the kernel reproduces and rejects the others (Triton interpreter).
On a GPU: tests/engine/model/test_patch_rope_gpu.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
from families import build_model
from interpreted import needs_triton, run_interpreted
from transformers.models.deepseek_v2 import modeling_deepseek_v2
from transformers.models.qwen3_moe import modeling_qwen3_moe

import engine.model.patch_rope as rope
from engine.kernels.fused_rope import DTYPES


@pytest.fixture
def restore_rope():
    original = modeling_qwen3_moe.apply_rotary_pos_emb
    yield original
    rope.uninstall_fused_rope()
    modeling_qwen3_moe.apply_rotary_pos_emb = original  # even if uninstall were broken


def _never(*args):
    raise AssertionError("the kernel ran outside a runner's forward on a GPU")


def test_wrapper_is_inert_off_the_gpu_or_with_the_switch_off(restore_rope, monkeypatch):
    original = restore_rope
    patch = rope.patch_module(modeling_qwen3_moe)
    wrapper = modeling_qwen3_moe.apply_rotary_pos_emb
    assert patch is not None and patch.original is original and wrapper is not original
    assert wrapper.__wrapped__ is original
    assert rope.patch_module(modeling_qwen3_moe) is patch  # installing twice changes nothing
    assert modeling_qwen3_moe.apply_rotary_pos_emb is wrapper and patch.original is original
    for dtype in DTYPES:  # as if every check had passed on a GPU: only the switch and device remain
        patch.checked[(dtype, False)] = patch.checked[(dtype, True)] = True
    monkeypatch.setattr(rope, "fused_rope", _never)

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 3, 4, 16, generator=gen).to(dtype).transpose(1, 2)
        k = torch.randn(2, 3, 2, 16, generator=gen).to(dtype).transpose(1, 2)
        cos = torch.randn(2, 3, 16, generator=gen).to(dtype)
        sin = torch.randn(2, 3, 16, generator=gen).to(dtype)
        want = original(q, k, cos, sin)
        for active in (False, True):
            with rope.fused_rope_active() if active else contextlib.nullcontext():
                got = wrapper(q, k, cos, sin)
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g, w) and g.stride() == w.stride()

    model = build_model("qwen3_moe")  # a whole forward through the patched module, switch on, on the CPU
    ids = torch.randint(3, 300, (1, 9), generator=gen)
    rope.uninstall_fused_rope()
    assert modeling_qwen3_moe.apply_rotary_pos_emb is original
    with torch.no_grad():
        want = model(ids).logits
        rope.patch_module(modeling_qwen3_moe).checked[(torch.float32, False)] = True
        with rope.fused_rope_active():
            got = model(ids).logits
    assert torch.equal(got, want)
    rope.uninstall_fused_rope()
    assert modeling_qwen3_moe.apply_rotary_pos_emb is original


def test_install_leaves_cpu_models_and_other_forms_alone(restore_rope):
    assert not rope.install_fused_rope(build_model("qwen3_moe"))  # CPU weights: nothing to run the kernel on
    assert modeling_qwen3_moe.apply_rotary_pos_emb is restore_rope
    assert not hasattr(modeling_deepseek_v2, "apply_rotary_pos_emb")  # its RoPE is the complex form
    assert rope.patch_module(modeling_deepseek_v2) is None
    assert not hasattr(modeling_deepseek_v2, "apply_rotary_pos_emb")


@needs_triton
def test_install_check_in_the_triton_interpreter(tmp_path):
    """The install check accepts qwen3_moe's rotate_half form and glm4_moe's partial form in float32 and
    bfloat16 and rejects gpt-oss's."""
    code = (
        "import torch\n"
        "from transformers.models.glm4_moe import modeling_glm4_moe as glm\n"
        "from transformers.models.gpt_oss import modeling_gpt_oss as oss\n"
        "from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3\n"
        "from engine.model.patch_rope import reproduces\n"
        "cpu = torch.device('cpu')\n"
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    assert reproduces(qwen3.apply_rotary_pos_emb, dtype, cpu, 16)\n"
        "    assert not reproduces(qwen3.apply_rotary_pos_emb, dtype, cpu, 16, partial=True)\n"
        "    assert reproduces(glm.apply_rotary_pos_emb, dtype, cpu, 16, partial=True)\n"
        "    for partial in (False, True):\n"
        "        assert not reproduces(oss.apply_rotary_pos_emb, dtype, cpu, 16, partial=partial)\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)
