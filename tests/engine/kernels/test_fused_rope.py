"""The fused RoPE: exact against transformers' own function (Triton interpreter), and inert wherever
the runner is not running on a GPU (no Triton needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from families import build_model
from interpreted import needs_triton, run_interpreted
from transformers.models.deepseek_v2 import modeling_deepseek_v2
from transformers.models.qwen3_moe import modeling_qwen3_moe

import engine.kernels.fused_rope as fr


@pytest.fixture
def restore_rope():
    original = modeling_qwen3_moe.apply_rotary_pos_emb
    yield original
    fr.uninstall_fused_rope()
    modeling_qwen3_moe.apply_rotary_pos_emb = original  # even if uninstall were broken


def _never(*args):
    raise AssertionError("the kernel ran outside a runner's forward on a GPU")


def test_wrapper_is_inert_off_the_gpu_or_with_the_switch_off(restore_rope, monkeypatch):
    original = restore_rope
    patch = fr.patch_module(modeling_qwen3_moe)
    wrapper = modeling_qwen3_moe.apply_rotary_pos_emb
    assert patch is not None and patch.original is original and wrapper is not original
    assert wrapper.__wrapped__ is original
    assert fr.patch_module(modeling_qwen3_moe) is patch  # installing twice changes nothing
    assert modeling_qwen3_moe.apply_rotary_pos_emb is wrapper and patch.original is original
    for dtype in fr.DTYPES:  # as if every check had passed on a GPU: only the switch and device remain
        patch.checked[(dtype, False)] = patch.checked[(dtype, True)] = True
    monkeypatch.setattr(fr, "fused_rope", _never)

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 3, 4, 16, generator=gen).to(dtype).transpose(1, 2)
        k = torch.randn(2, 3, 2, 16, generator=gen).to(dtype).transpose(1, 2)
        cos = torch.randn(2, 3, 16, generator=gen).to(dtype)
        sin = torch.randn(2, 3, 16, generator=gen).to(dtype)
        want = original(q, k, cos, sin)
        for active in (False, True):
            with fr.fused_rope_active() if active else contextlib.nullcontext():
                got = wrapper(q, k, cos, sin)
            for g, w in zip(got, want, strict=True):
                assert torch.equal(g, w) and g.stride() == w.stride()

    model = build_model("qwen3_moe")  # a whole forward through the patched module, switch on, on the CPU
    ids = torch.randint(3, 300, (1, 9), generator=gen)
    fr.uninstall_fused_rope()
    assert modeling_qwen3_moe.apply_rotary_pos_emb is original
    with torch.no_grad():
        want = model(ids).logits
        fr.patch_module(modeling_qwen3_moe).checked[(torch.float32, False)] = True
        with fr.fused_rope_active():
            got = model(ids).logits
    assert torch.equal(got, want)
    fr.uninstall_fused_rope()
    assert modeling_qwen3_moe.apply_rotary_pos_emb is original


def test_install_leaves_cpu_models_and_other_forms_alone(restore_rope):
    assert not fr.install_fused_rope(build_model("qwen3_moe"))  # CPU weights: nothing to run the kernel on
    assert modeling_qwen3_moe.apply_rotary_pos_emb is restore_rope
    assert not hasattr(modeling_deepseek_v2, "apply_rotary_pos_emb")  # its RoPE is the complex form
    assert fr.patch_module(modeling_deepseek_v2) is None
    assert not hasattr(modeling_deepseek_v2, "apply_rotary_pos_emb")


def test_supported_shapes():
    q, k = torch.zeros(2, 3, 4, 16).transpose(1, 2), torch.zeros(2, 2, 3, 16)  # any strides
    cos = torch.zeros(2, 3, 16)
    assert fr.supported(q, k, cos, cos)
    assert fr.supported(q, k, cos[:1], cos[:1])  # positions shared by the batch
    assert fr.supported(q, k, cos[..., :8], cos[..., :8])  # partial rotary
    assert not fr.supported(q, k, cos, cos, unsqueeze_dim=2)
    assert not fr.supported(q, k, cos[..., :7], cos[..., :7])  # odd rotary width
    assert not fr.supported(q, k, cos[:, :1], cos[:, :1])  # other positions than tokens
    assert not fr.supported(q, k.double(), cos, cos)
    assert not fr.supported(q.double(), k.double(), cos.double(), cos.double())
    with torch.enable_grad():  # the kernel has no backward
        assert not fr.supported(torch.zeros(2, 4, 3, 16, requires_grad=True), k, cos, cos)


@needs_triton
def test_fused_rope_is_exact_in_the_triton_interpreter(tmp_path):
    """Bit-equal to transformers' apply_rotary_pos_emb (qwen3_moe's rotate_half form; glm4_moe's partial
    form) in float32, bfloat16 and float16, on transposed views of a projection, T = 1 and 3; the install
    check accepts those forms and rejects gpt-oss's; a whole model's logits are unchanged with the kernel
    in every layer (qwen3_moe in bfloat16, mixtral in float32)."""
    code = (
        "import torch\n"
        "from transformers.models.glm4_moe import modeling_glm4_moe as glm\n"
        "from transformers.models.gpt_oss import modeling_gpt_oss as oss\n"
        "from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3\n"
        "from engine.kernels.fused_rope import fused_rope, reproduces, supported\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "for dtype in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    for t in (1, 3):\n"
        "        for d in (16, 32):\n"
        "            q = (3 * torch.randn(2, t, 4, d, generator=gen)).to(dtype).transpose(1, 2)\n"
        "            k = (3 * torch.randn(2, t, 2, d, generator=gen)).to(dtype).transpose(1, 2)\n"
        "            angle = 1000 * torch.rand(2, t, d // 2, generator=gen)\n"
        "            angle = torch.cat((angle, angle), dim=-1)\n"
        "            cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)\n"
        "            half = torch.cat((angle[..., : d // 4], angle[..., : d // 4]), dim=-1)\n"
        "            cases = [(qwen3, cos, sin), (qwen3, cos[:1], sin[:1]),\n"
        "                     (glm, half.cos().to(dtype), half.sin().to(dtype))]\n"
        "            for mod, c, s in cases:\n"
        "                assert supported(q, k, c, s)\n"
        "                want, got = mod.apply_rotary_pos_emb(q, k, c, s), fused_rope(q, k, c, s)\n"
        "                for w, g in zip(want, got):\n"
        "                    assert g.shape == w.shape and g.dtype == w.dtype and g.is_contiguous()\n"
        "                    assert torch.equal(g, w), (dtype, t, d, mod.__name__, (g != w).sum())\n"
        "cpu = torch.device('cpu')\n"
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    assert reproduces(qwen3.apply_rotary_pos_emb, dtype, cpu, 16)\n"
        "    assert not reproduces(qwen3.apply_rotary_pos_emb, dtype, cpu, 16, partial=True)\n"
        "    assert reproduces(glm.apply_rotary_pos_emb, dtype, cpu, 16, partial=True)\n"
        "    for partial in (False, True):\n"
        "        assert not reproduces(oss.apply_rotary_pos_emb, dtype, cpu, 16, partial=partial)\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from families import build_model\n"
        "for family, dtype in (('qwen3_moe', torch.bfloat16), ('mixtral', torch.float32)):\n"
        "    model = build_model(family).to(dtype)\n"
        "    mod = sys.modules[type(model).__module__]\n"
        "    ids = torch.randint(3, 300, (2, 3), generator=gen)\n"
        "    original, calls = mod.apply_rotary_pos_emb, []\n"
        "    def kernel_only(q, k, cos, sin, unsqueeze_dim=1):\n"
        "        assert supported(q, k, cos, sin, unsqueeze_dim)\n"
        "        calls.append(1)\n"
        "        return fused_rope(q, k, cos, sin)\n"
        "    with torch.no_grad():\n"
        "        want = model(ids).logits\n"
        "        mod.apply_rotary_pos_emb = kernel_only\n"
        "        try:\n"
        "            got = model(ids).logits\n"
        "        finally:\n"
        "            mod.apply_rotary_pos_emb = original\n"
        "    assert len(calls) == model.config.num_hidden_layers and torch.equal(got, want), family\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)
