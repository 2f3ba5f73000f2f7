"""The static KV cache and the attention masks built for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.runner.kv_cache import MaskBuilder, StaticKV

H, D = 2, 4


def kv_states(b: int, t: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.full((b, H, t, D), fill)
    return k, -k


def test_prefill_writes_its_row_and_returns_the_filled_prefix():
    kv = StaticKV(rows=3, max_len=10, device=torch.device("cpu"))
    kv.set_prefill(row=1, start=0, length=4)
    k, v = kv.update(*kv_states(1, 4, 1.0), layer_idx=0)
    assert k.shape == (1, H, 4, D) and torch.all(k == 1) and torch.all(v == -1)
    kv.set_prefill(row=1, start=4, length=2)  # a continuation sees the whole prefix
    k, _ = kv.update(*kv_states(1, 2, 2.0), layer_idx=0)
    assert k.shape == (1, H, 6, D)
    assert torch.all(k[0, :, :4] == 1) and torch.all(k[0, :, 4:] == 2)
    assert torch.all(kv.keys[0][0] == 0) and torch.all(kv.keys[0][2] == 0)  # other rows untouched


def test_decode_writes_each_row_at_its_own_position():
    kv = StaticKV(rows=4, max_len=8, device=torch.device("cpu"))
    kv.set_prefill(0, 0, 1)
    kv.update(*kv_states(1, 1, 0.0), layer_idx=0)  # allocates
    pos = torch.tensor([5, 2, 7])
    kv.set_decode(batch=3, kv_len=8, pos=pos)
    k_new = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, H, 1, D) + 1
    k, v = kv.update(k_new, -k_new, layer_idx=0)
    assert k.shape == (3, H, 8, D)
    for b, p in enumerate(pos.tolist()):
        assert torch.all(kv.keys[0][b, :, p] == b + 1) and torch.all(kv.values[0][b, :, p] == -(b + 1))
        others = [q for q in range(8) if q != p]
        assert torch.all(kv.keys[0][b, :, others] == 0)
    assert torch.all(kv.keys[0][3] == 0)  # row 3 was not in the step


def test_decode_step_is_known_only_while_decoding():
    kv = StaticKV(rows=2, max_len=8, device=torch.device("cpu"))
    assert kv.decode_step() is None
    kv.set_prefill(0, 0, 3)
    assert kv.decode_step() is None
    pos = torch.tensor([3, 6])
    kv.set_decode(batch=2, kv_len=8, pos=pos)
    batch, kv_len, got = kv.decode_step()
    assert (batch, kv_len) == (2, 8) and got is pos  # the device tensor itself: what a graph replays
    kv.set_prefill(1, 0, 2)
    assert kv.decode_step() is None


def test_move_row_copies_the_filled_positions_of_every_layer():
    kv = StaticKV(rows=3, max_len=6, device=torch.device("cpu"))
    for layer in range(2):
        kv.set_prefill(2, 0, 5)
        kv.update(*kv_states(1, 5, 3.0 + layer), layer_idx=layer)
    kv.move_row(src=2, dst=0, length=5)
    for layer in range(2):
        assert torch.all(kv.keys[layer][0, :, :5] == 3 + layer)
        assert torch.all(kv.values[layer][0, :, :5] == -(3 + layer))
    assert kv.nbytes == 2 * 2 * 3 * H * 6 * D * 4


def test_limits_are_checked():
    kv = StaticKV(rows=2, max_len=4, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="do not fit"):
        kv.set_prefill(0, 2, 3)
    with pytest.raises(IndexError):
        kv.set_prefill(2, 0, 1)
    with pytest.raises(ValueError):
        kv.set_decode(3, 4, torch.zeros(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="must come before"):
        StaticKV(1, 4, torch.device("cpu")).update(*kv_states(1, 1, 0.0), layer_idx=0)


def config(**kw):
    return SimpleNamespace(_attn_implementation=kw.pop("impl", "sdpa"), **kw)


def test_masks_causal_windowed_and_by_layer_type():
    cpu = torch.device("cpu")
    q = torch.tensor([[2], [4]])  # two rows decoding at positions 2 and 4
    m = MaskBuilder(config(sliding_window=None), torch.float32, cpu).build(q, 6)
    assert m.dtype == torch.bool and m.shape == (2, 1, 1, 6)
    assert m[0, 0, 0].tolist() == [True, True, True, False, False, False]
    assert m[1, 0, 0].tolist() == [True] * 5 + [False]
    w = MaskBuilder(config(sliding_window=2), torch.float32, cpu).build(q, 6)
    assert w[1, 0, 0].tolist() == [False, False, False, True, True, False]  # q - 2 < j <= q
    both = MaskBuilder(
        config(sliding_window=2, layer_types=["sliding_attention", "full_attention"]), torch.float32, cpu
    ).build(q, 6)
    assert torch.equal(both["full_attention"], m) and torch.equal(both["sliding_attention"], w)
    prefill = MaskBuilder(config(sliding_window=None), torch.float32, cpu).build(torch.arange(3)[None], 3)
    assert prefill[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_layer_window_is_the_window_of_that_layers_mask():
    cpu = torch.device("cpu")
    assert MaskBuilder(config(sliding_window=None), torch.float32, cpu).layer_window(0) is None
    assert MaskBuilder(config(sliding_window=5), torch.float32, cpu).layer_window(2) == 5  # model-wide
    by_type = MaskBuilder(
        config(sliding_window=5, layer_types=["sliding_attention", "full_attention"]), torch.float32, cpu
    )
    assert [by_type.layer_window(i) for i in range(2)] == [5, None]
    no_window = MaskBuilder(  # sliding layers without a window size get the causal mask
        config(sliding_window=0, layer_types=["sliding_attention", "full_attention"]), torch.float32, cpu
    )
    assert [no_window.layer_window(i) for i in range(2)] == [None, None]


def test_the_decode_attention_gets_sdpas_boolean_masks():
    """A model already switched to "moe_decode" (by another runner) gets what its sdpa fallback takes."""
    m = MaskBuilder(config(impl="moe_decode", sliding_window=None), torch.float32, torch.device("cpu"))
    assert m.build(torch.tensor([[1]]), 3).dtype == torch.bool


def test_eager_attention_gets_an_additive_mask():
    m = MaskBuilder(config(impl="eager", sliding_window=None), torch.bfloat16, torch.device("cpu"))
    out = m.build(torch.tensor([[1]]), 3)
    assert out.dtype == torch.bfloat16
    assert out[0, 0, 0, :2].tolist() == [0.0, 0.0] and out[0, 0, 0, 2] == torch.finfo(torch.bfloat16).min
    with pytest.raises(ValueError, match="sdpa and eager"):
        MaskBuilder(config(impl="flash_attention_2"), torch.bfloat16, torch.device("cpu"))
