"""The decode step's attention kernels ("moe_decode") and their fallback.

In Triton's CPU interpreter (skipped where Triton is not installed): the KV write equals `index_put_`
exactly, the attention equals sdpa with the runner's boolean mask and repeated KV heads, and the runner
with both kernels gives transformers' greedy tokens, batch 1 and batched, windows included. Without
Triton: every call the kernel does not do is transformers' sdpa unchanged, and a CPU runner changes
nothing at all. On a GPU: tests/engine/model/test_decode_attention_gpu.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from families import FAMILIES
from interpreted import needs_triton, run_interpreted
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from engine.kernels.triton_guard import kernels_run_on
from engine.model.decode_attention import (
    KWARG,
    NAME,
    NOT_A_DECODE,
    DecodeAttention,
    moe_decode_attention_forward,
)
from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.kv_cache import StaticKV
from engine.runner.runner import ModelRunner


@needs_triton
def test_kernels_in_the_triton_interpreter(tmp_path):
    """fp32 within 1e-5 of sdpa (same math, other summation order); bf16 within 1e-2 of sdpa run in fp32
    on the same bf16 inputs (the output's own rounding is 2^-8 relative)."""
    run_interpreted(
        tmp_path,
        """
        import torch
        import torch.nn.functional as F
        from engine.kernels.decode_kernels import SPLIT, decode_attention, write_step_kv
        from engine.runner.kv_cache import StaticKV

        def reference(q, k, v, pos, scale, window):
            # what transformers runs: sdpa, the runner's boolean mask, KV heads repeated
            hq, hk, kv_len = q.shape[1], k.shape[1], k.shape[2]
            j = torch.arange(kv_len)[None, :]
            allowed = j <= pos[:, None]
            if window:
                allowed &= j > pos[:, None] - window
            rep = hq // hk
            out = F.scaled_dot_product_attention(
                q.float(), k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1),
                attn_mask=allowed[:, None, None, :], scale=scale,
            )
            return out.transpose(1, 2)  # [B, 1, Hq, Dv]

        torch.manual_seed(0)
        B = 3
        cases = [  # Hq, Hk, Dk, Dv, kv_len, row positions, window
            (4, 2, 16, 16, 64, [5, 63, 30], None),  # grouped-query
            (4, 2, 16, 16, 64, [5, 63, 30], 8),  # sliding window
            (4, 4, 24, 16, 64, [0, 40, 63], None),  # MLA-like: Dk != Dv, one KV head per query head
            (4, 2, 16, 16, 2 * SPLIT + 88, [7, 2 * SPLIT + 87, 300], None),  # split over programs
            (4, 2, 16, 8, 2 * SPLIT + 88, [7, 2 * SPLIT + 87, 300], 100),  # split, window, Dk != Dv
        ]
        for hq, hk, dk, dv, kv_len, pos, window in cases:
            pos = torch.tensor(pos)
            q = torch.randn(B, 1, hq, dk).transpose(1, 2)  # [B, Hq, 1, Dk] views, as the modules make them
            k = torch.randn(B, kv_len, hk, dk).transpose(1, 2)
            v = torch.randn(B, hk, kv_len, dv + 4)[..., 4:]  # a slice of a wider tensor
            got = decode_attention(q, k, v, pos, 0.25, window)
            assert got.shape == (B, 1, hq, dv) and got.is_contiguous(), got.shape
            torch.testing.assert_close(got, reference(q, k, v, pos, 0.25, window), rtol=1e-5, atol=1e-5)
            qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
            got = decode_attention(qb, kb, vb, pos, 0.25, window)
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), reference(qb, kb, vb, pos, 0.25, window), rtol=1e-2, atol=1e-2)

        # the KV write: a copy, so exactly index_put_'s result; Dk != Dv (MLA latents), strided inputs
        for dtype in (torch.float32, torch.bfloat16):
            keys, values = torch.randn(4, 2, 10, 24).to(dtype), torch.randn(4, 2, 10, 16).to(dtype)
            k_new = torch.randn(3, 1, 2, 24).to(dtype).transpose(1, 2)  # [B, Hk, 1, Dk]
            v_new = torch.randn(3, 2, 1, 20).to(dtype)[..., 4:]  # [B, Hk, 1, Dv]
            pos, rows = torch.tensor([2, 9, 0]), torch.arange(3)
            want_k, want_v = keys.clone(), values.clone()
            want_k.transpose(1, 2).index_put_((rows, pos), k_new[:, :, 0])
            want_v.transpose(1, 2).index_put_((rows, pos), v_new[:, :, 0])
            write_step_kv(keys, values, k_new, v_new, pos)
            assert torch.equal(keys, want_k) and torch.equal(values, want_v)

        # through StaticKV: the fused write and index_put_ leave the same buffers
        caches = [StaticKV(4, 12, torch.device("cpu"), fused_write=f) for f in (True, False)]
        for kv in caches:
            torch.manual_seed(1)
            kv.set_prefill(1, 0, 5)
            kv.update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 6), layer_idx=0)
            kv.set_decode(3, 12, torch.tensor([5, 11, 0]))
            kv.update(torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 6), layer_idx=0)
        assert torch.equal(caches[0].keys[0], caches[1].keys[0])
        assert torch.equal(caches[0].values[0], caches[1].values[0])
        print("ok")
        """,
    )


@needs_triton
def test_runner_with_the_kernels_in_the_triton_interpreter(tmp_path):
    """Greedy tokens with both kernels equal transformers' own, at batch 1 and for three rows decoding
    together (padded to four), with grouped-query attention, MLA latents, a model-wide sliding window
    and sliding layers by type; every decode-step call took the kernel."""
    run_interpreted(
        tmp_path,
        """
        from pathlib import Path

        import torch
        from families import decode_rows, greedy_reference, write_checkpoint

        from engine.model.decode_attention import NOT_A_DECODE
        from engine.model.loader import CacheBudget, load_checkpoint
        from engine.runner.runner import ModelRunner

        NEW = 6
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (5, 11, 8)]
        models = {  # window 6 < prompt + new tokens: the windows cut
            "qwen3_moe": {},
            "deepseek_v2": {},
            "mixtral": dict(sliding_window=6),
            "qwen2_moe": dict(use_sliding_window=True, sliding_window=6, max_window_layers=1),
        }
        for family, overrides in models.items():
            ckpt = write_checkpoint(family, Path(family), **overrides)
            want = [greedy_reference(ckpt, p, NEW) for p in prompts]
            om = load_checkpoint(ckpt, torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0))
            runner = ModelRunner(om, rows=4, attention_kernels=True)
            assert runner.kv.fused_write and om.model.config._attn_implementation == "moe_decode"
            assert runner.greedy(prompts[0], NEW) == want[0], family
            toks = decode_rows(runner, prompts, NEW)
            assert toks == want, (family, toks, want)
            calls = runner.attention.calls
            assert calls["kernel"] > 0 and set(calls) == {"kernel", NOT_A_DECODE}, (family, calls)
        print("ok")
        """,
    )


# ----------------------------------------------------------------------------- without the kernels
H_Q, H_K, D, KV_LEN = 4, 2, 16, 8


def decode_call(batch: int = 2):
    """A StaticKV in decode mode and one decode step's attention inputs, as a module would pass them."""
    kv = StaticKV(rows=batch, max_len=KV_LEN, device=torch.device("cpu"))
    kv.set_decode(batch, KV_LEN, torch.tensor([3, 7][:batch]))
    module = SimpleNamespace(num_key_value_groups=H_Q // H_K, layer_idx=0, is_causal=True, training=False)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, H_Q, 1, D, generator=gen)
    k = torch.randn(batch, H_K, KV_LEN, D, generator=gen)
    v = torch.randn(batch, H_K, KV_LEN, D, generator=gen)
    mask = torch.arange(KV_LEN)[None, None, None, :] <= torch.tensor([3, 7][:batch])[:, None, None, None]
    return kv, module, q, k, v, mask


def test_every_call_the_kernel_does_not_do_says_why():
    kv, module, q, k, v, mask = decode_call()
    ctx = DecodeAttention(kv, windows=[None])

    def why(module=module, q=q, k=k, v=v, mask=mask, dropout=0.0, **kw):
        return ctx.unsupported(module, q, k, v, mask, dropout, kw)

    assert why(dropout=0.1) == "dropout"
    assert why(softcap=30.0) == "soft cap"
    assert why(s_aux=torch.zeros(H_Q)) == "attention sinks"
    assert why(position_bias=torch.zeros(1)) == "position bias"
    assert why(mask=None) == "no mask"
    assert why(module=SimpleNamespace(num_key_value_groups=2)) == "no layer index"
    assert why(q=torch.randn(2, H_Q, 2, D)) == "shape"  # two queries per row
    assert why(q=q[:1]) == "shape"  # not the step's rows
    assert why(k=k[:, :, :4], v=v[:, :, :4]) == "shape"  # not the step's span
    big = torch.randn(2, H_Q, 1, 512)
    assert why(q=big, k=torch.randn(2, H_K, KV_LEN, 512), v=torch.randn(2, H_K, KV_LEN, 512)) == "head dim"
    assert why(q=q.double(), k=k.double(), v=v.double()) == "dtype"
    assert why() == (None if kernels_run_on(q) else "no Triton kernels on cpu")
    kv.set_prefill(0, 0, 1)
    assert why() == NOT_A_DECODE


def test_what_the_kernel_does_not_do_is_sdpa_unchanged():
    kv, module, q, k, v, mask = decode_call()
    ctx = DecodeAttention(kv, windows=[None])
    kwargs = dict(dropout=0.0, scaling=0.3, s_aux=torch.zeros(H_Q))  # sinks: never the kernel's
    got, weights = moe_decode_attention_forward(module, q, k, v, mask, **kwargs, **{KWARG: ctx})
    want, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert weights is None and torch.equal(got, want)
    assert ctx.calls == {"attention sinks": 1}
    got, _ = moe_decode_attention_forward(module, q, k, v, mask, scaling=0.3)  # no DecodeAttention: sdpa
    assert torch.equal(got, sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0])


def test_a_cpu_runner_changes_nothing(checkpoints):
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0)
    )
    runner = ModelRunner(om)
    assert runner.attention is None and not runner.kv.fused_write
    assert om.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_kernels_give_the_same_tokens_wherever_they_cannot_run(family, checkpoints, references):
    """attention_kernels=True on the CPU switches the model; without Triton's interpreter every call goes
    to sdpa (through each family's forward: the keyword argument reaches the attention function), and
    the tokens stay transformers'. Only this model is switched; gpt-oss (eager, sinks) is never."""
    prompt, _, want = references[family]
    cpu = torch.device("cpu")
    om = load_checkpoint(checkpoints[family], cpu, torch.float32, CacheBudget(fraction=1.0))
    runner = ModelRunner(om, rows=2, attention_kernels=True)
    assert runner.greedy(prompt, 8) == want[:8]
    other = load_checkpoint(checkpoints[family], cpu, torch.float32, CacheBudget(fraction=1.0))
    if family == "gpt_oss":
        assert runner.attention is None and om.model.config._attn_implementation == "eager"
        return
    assert om.model.config._attn_implementation == NAME
    assert other.model.config._attn_implementation == "sdpa"
    ran = "kernel" if kernels_run_on(torch.empty(0)) else "no Triton kernels on cpu"
    assert runner.attention.calls[ran] == 8 * om.model.config.num_hidden_layers  # every decode step
    assert set(runner.attention.calls) == {ran, NOT_A_DECODE}
