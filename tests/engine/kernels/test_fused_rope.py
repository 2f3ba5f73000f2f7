"""The fused RoPE kernel: exact against transformers' own function (Triton interpreter), and the
arguments it takes. Its patch into transformers: tests/engine/model/test_patch_rope.py."""

from __future__ import annotations

from pathlib import Path

import torch
from interpreted import needs_triton, run_interpreted

from engine.kernels.fused_rope import supported


def test_supported_shapes():
    q, k = torch.zeros(2, 3, 4, 16).transpose(1, 2), torch.zeros(2, 2, 3, 16)  # any strides
    cos = torch.zeros(2, 3, 16)
    assert supported(q, k, cos, cos)
    assert supported(q, k, cos[:1], cos[:1])  # positions shared by the batch
    assert supported(q, k, cos[..., :8], cos[..., :8])  # partial rotary
    assert not supported(q, k, cos, cos, unsqueeze_dim=2)
    assert not supported(q, k, cos[..., :7], cos[..., :7])  # odd rotary width
    assert not supported(q, k, cos[:, :1], cos[:, :1])  # other positions than tokens
    assert not supported(q, k.double(), cos, cos)
    assert not supported(q.double(), k.double(), cos.double(), cos.double())
    with torch.enable_grad():  # the kernel has no backward
        assert not supported(torch.zeros(2, 4, 3, 16, requires_grad=True), k, cos, cos)


@needs_triton
def test_fused_rope_is_exact_in_the_triton_interpreter(tmp_path):
    """Bit-equal to transformers' apply_rotary_pos_emb (qwen3_moe's rotate_half form; glm4_moe's partial
    form) in float32, bfloat16 and float16, on transposed views of a projection, T = 1 and 3; a whole
    model's logits are unchanged with the kernel in every layer (qwen3_moe in bfloat16, mixtral in float32).
    The install check (which accepts those forms and rejects gpt-oss's): tests/engine/model/test_patch_rope.py."""
    code = (
        "import torch\n"
        "from transformers.models.glm4_moe import modeling_glm4_moe as glm\n"
        "from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3\n"
        "from engine.kernels.fused_rope import fused_rope, supported\n"
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
