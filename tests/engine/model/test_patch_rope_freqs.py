"""The rotary-frequency patch: PhiMoE's rotary module, which rebuilds its frequencies on the host in every
forward (a pageable host-to-device copy CUDA graphs cannot capture), answers from a copy made once; the
values, and so the model's logits, are unchanged, and every other family is left alone. The capture
itself is tested on a GPU (tests/engine/runner/test_decode_graphs_gpu.py, phimoe)."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, build_model

from engine.model.patch_rope_freqs import cache_rope_freqs, rebuilds_freqs


def _rotary(model):
    return [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]


def test_phimoe_rotary_answers_from_one_copy_with_the_same_values():
    model = build_model("phimoe")
    (rot,) = _rotary(model)
    assert rebuilds_freqs(rot)
    x = torch.randn(1, 5, model.config.hidden_size)
    pos = torch.arange(5)[None]
    want = rot(x, pos)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        logits = model(ids).logits
    original = rot.rope_init_fn
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    rot.rope_init_fn = counting
    assert cache_rope_freqs(model) == 1 and len(calls) == 1  # the one build of the copy
    assert cache_rope_freqs(model) == 0  # installing twice changes nothing
    for w, g in zip(want, rot(x, pos), strict=True):
        assert torch.equal(w, g)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
    assert len(calls) == 1  # the forwards rebuilt nothing
    freqs, _ = rot.rope_init_fn(rot.config)
    assert freqs.device == rot.inv_freq.device and torch.equal(freqs, original(rot.config)[0])
    # any other call (the long-RoPE update passes a length) still reaches the original
    rot.rope_init_fn(rot.config, seq_len=64)
    assert len(calls) == 2


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "phimoe"])
def test_other_families_are_left_alone(family):
    model = build_model(family)
    before = [getattr(m, "rope_init_fn", None) for m in _rotary(model)]
    assert cache_rope_freqs(model) == 0
    assert [getattr(m, "rope_init_fn", None) for m in _rotary(model)] == before
