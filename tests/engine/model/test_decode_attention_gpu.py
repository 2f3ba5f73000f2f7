"""The decode step's KV write and attention kernels on a GPU (skipped without one): against torch at real
head shapes, replayed from a CUDA graph with new positions, and in the runner: the unmodified model's
greedy tokens for every family, batch 1 and batched, with the kernel taken where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from families import decode_rows, greedy_reference

from engine.kernels.decode_kernels import SPLIT, decode_attention, write_step_kv
from engine.model.decode_attention import NAME, NOT_A_DECODE
from engine.model.loader import CacheBudget, load_checkpoint
from engine.runner.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
NEW = 12
FAMILIES = ["qwen3_moe", "deepseek_v2", "mixtral", "olmoe", "qwen2_moe", "gpt_oss"]
EAGER = {"gpt_oss"}  # on eager attention (its sinks): the model keeps it, only the KV write is a kernel


def reference(q, k, v, pos, scale, window=None) -> torch.Tensor:
    """sdpa in float64 with the runner's boolean mask and the KV heads repeated -> [B, 1, Hq, Dv]."""
    hq, hk, kv_len = q.shape[1], k.shape[1], k.shape[2]
    j = torch.arange(kv_len, device=q.device)[None, :]
    allowed = j <= pos[:, None]
    if window:
        allowed &= j > pos[:, None] - window
    rep = hq // hk
    out = F.scaled_dot_product_attention(
        q.double(),
        k.double().repeat_interleave(rep, 1),
        v.double().repeat_interleave(rep, 1),
        attn_mask=allowed[:, None, None, :],
        scale=scale,
    )
    return out.transpose(1, 2)


SHAPES = {  # Hq, Hk, Dk, Dv
    "qwen3-30b-a3b": (32, 4, 128, 128),
    "deepseek-v2-lite": (16, 16, 192, 128),  # MLA expanded: Dk != Dv
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_len", [128, 4096])  # one program per head; split over programs
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_attention_matches_sdpa(shape, kv_len, dtype):
    hq, hk, dk, dv = SHAPES[shape]
    gen = torch.Generator(device=CUDA).manual_seed(0)
    b = 3
    pos = torch.tensor([0, kv_len - 1, kv_len // 2 + 3], device=CUDA)
    q = torch.randn(b, 1, hq, dk, device=CUDA, generator=gen).to(dtype).transpose(1, 2)
    k = torch.randn(b, kv_len, hk, dk, device=CUDA, generator=gen).to(dtype).transpose(1, 2)
    v = torch.randn(b, hk, kv_len, dv, device=CUDA, generator=gen).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for window in (None, 100):
        got = decode_attention(q, k, v, pos, dk**-0.5, window)
        assert got.shape == (b, 1, hq, dv) and got.dtype == dtype
        want = reference(q, k, v, pos, dk**-0.5, window)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_kernels_replay_from_a_cuda_graph_with_the_new_positions():
    """Captured once; each replay writes and attends at the positions then in the static tensor."""
    hq, hk, d, rows, max_len, kv_len = 8, 2, 64, 4, 1024, 2 * SPLIT  # two splits: scratch in the pool
    gen = torch.Generator(device=CUDA).manual_seed(1)
    keys = torch.randn(rows, hk, max_len, d, device=CUDA, generator=gen)
    values = torch.randn(rows, hk, max_len, d, device=CUDA, generator=gen)
    q = torch.randn(3, hq, 1, d, device=CUDA, generator=gen)
    k_new = torch.randn(3, hk, 1, d, device=CUDA, generator=gen)
    v_new = torch.randn(3, hk, 1, d, device=CUDA, generator=gen)
    pos = torch.tensor([1, 2, 3], device=CUDA)

    def step():
        write_step_kv(keys, values, k_new, v_new, pos)
        return decode_attention(q, keys[:3, :, :kv_len], values[:3, :, :kv_len], pos, 0.125)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and warm outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for new in ([7, 300, 511], [0, 5, 260]):
        pos.copy_(torch.tensor(new, device=CUDA))
        want_k, want_v = keys.clone(), values.clone()
        idx = torch.arange(3, device=CUDA)
        want_k.transpose(1, 2).index_put_((idx, pos), k_new[:, :, 0])
        want_v.transpose(1, 2).index_put_((idx, pos), v_new[:, :, 0])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(keys, want_k) and torch.equal(values, want_v)
        want = reference(q, keys[:3, :, :kv_len], values[:3, :, :kv_len], pos, 0.125)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_runner_with_the_kernels_gives_the_reference_tokens(family, checkpoints, references):
    """fp32, every expert resident (whole-step graphs): batch 1, then three rows padded to four."""
    gen = torch.Generator().manual_seed(5)
    prompts = [references[family][0]] + [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (7, 19)]
    want = [greedy_reference(checkpoints[family], p, NEW, device="cuda") for p in prompts]
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=1.0))
    assert om.cache.load_all()
    runner = ModelRunner(om, rows=4)
    assert runner.kv.fused_write
    assert runner.greedy(prompts[0], NEW) == want[0]
    assert decode_rows(runner, prompts, NEW) == want
    torch.cuda.synchronize()
    runner.after_step()
    assert runner.graph_failure is None and runner.steps["graph"] > 0
    if family in EAGER:
        assert runner.attention is None and om.model.config._attn_implementation == "eager"
        return
    assert om.model.config._attn_implementation == NAME
    calls = runner.attention.calls  # host-side calls: eager steps and captures (replays call no Python)
    assert calls["kernel"] > 0 and set(calls) == {"kernel", NOT_A_DECODE}, calls


def test_the_kernels_can_be_turned_off(checkpoints, references):
    prompt = references["qwen3_moe"][0]
    om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=1.0))
    runner = ModelRunner(om, attention_kernels=False)
    assert runner.attention is None and not runner.kv.fused_write
    assert om.model.config._attn_implementation == "sdpa"
    assert runner.greedy(prompt, NEW) == greedy_reference(
        checkpoints["qwen3_moe"], prompt, NEW, device="cuda"
    )
