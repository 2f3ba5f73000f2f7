"""Coded expert copies (`engine.experts.coded`, `engine.model.coding.attach_coded`): the code is lossless for any bf16 row,
and a cache that copies codes gives the same logits and greedy tokens as one that copies the weights, at
every cache size (the copies are the only thing that changes)."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES
from interpreted import needs_triton, run_interpreted

from engine.experts.coded import CodeLayout, code_store, decode_reference, encode
from engine.model.coding import attach_coded
from engine.model.loader import CacheBudget, load_checkpoint, replace_cache
from engine.runner.runner import ModelRunner


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("numel", [1, 1000, 16384, 16385, 70001])
@pytest.mark.parametrize("steps", [32, 128])
def test_codes_decode_to_the_same_bits(numel, steps):
    g = torch.Generator().manual_seed(numel + steps)
    w = (torch.randn(numel, generator=g) * 0.02).to(torch.bfloat16)
    w[::97] = 0.0  # zeros, subnormal-free extremes and specials share the exponent byte's code
    w[1::101] = float("inf")
    w[2::103] = -3.0e38
    layout = CodeLayout(numel, steps)
    blob = encode(w, layout)
    out = torch.full((numel,), 7.0, dtype=torch.bfloat16)
    decode_reference(blob, layout, out)
    assert torch.equal(_bits(out), _bits(w))


def test_a_large_row_codes_to_about_two_thirds_of_its_bytes():
    w = (torch.randn(3 * 64 * 2048, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    layout = CodeLayout(w.numel())
    assert 0.6 < encode(w, layout).numel() / (2 * w.numel()) < 0.72


def test_one_exponent_only_still_codes():
    w = torch.full((5000,), 1.5, dtype=torch.bfloat16)
    layout = CodeLayout(w.numel(), 64)
    out = torch.empty_like(w)
    assert torch.equal(_bits(decode_reference(encode(w, layout), layout, out)), _bits(w))


def test_only_bf16_rows_are_coded(checkpoints):
    with pytest.raises(ValueError, match="bfloat16"):
        encode(torch.zeros(10), CodeLayout(10))
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    with pytest.raises(ValueError, match="MOE_DTYPE=bfloat16"):
        code_store(om.store, torch.device("cpu"))


@pytest.mark.parametrize("family", FAMILIES)
def test_coded_copies_change_no_output(family, checkpoints):
    """bf16 on the CPU: the same model's logits and greedy tokens with plain and coded copies, at 50% and
    the minimum cache (every layer-step copies), eviction lru and lfu."""
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.bfloat16, CacheBudget(fraction=0.5))
    prompt = [3, 14, 15, 92, 65, 35]
    runs = {}
    for coded in (False, True):
        if coded:
            attach_coded(om.store, torch.device("cpu"), steps=32)  # tiny experts: codes larger than them
        for fraction, eviction in ((0.5, "lru"), (1e-9, "lfu")):
            cache = replace_cache(om, CacheBudget(fraction=fraction, eviction=eviction))
            assert (cache.coded is not None) == coded
            with torch.no_grad():
                logits = om.model(torch.tensor([prompt])).logits[0]
            tokens = ModelRunner(om).greedy(prompt, 8)
            c = om.counters.totals()
            assert c["misses"] > 0
            assert c["bytes_demand"] == c["misses"] * cache.copy_nbytes
            runs[coded, fraction] = logits, tokens
    for fraction in (0.5, 1e-9):
        plain, coded = runs[False, fraction], runs[True, fraction]
        assert torch.equal(plain[0], coded[0])
        assert plain[1] == coded[1]


@needs_triton
def test_the_decode_kernel_in_the_interpreter(tmp_path):
    run_interpreted(
        tmp_path,
        """
        import torch
        from engine.experts.coded import CodeLayout, encode
        from engine.model.coding import device_decoder
        for numel, steps in ((5000, 32), (40000, 128)):
            w = (torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 0.02).to(torch.bfloat16)
            layout = CodeLayout(numel, steps)
            out = torch.zeros(numel + 64, dtype=torch.bfloat16)  # nothing past the row is written
            device_decoder(encode(w, layout), layout, out[:numel])
            assert torch.equal(out[:numel].view(torch.int16), w.view(torch.int16)), numel
            assert not out[numel:].any()
        print("ok")
        """,
    )


@needs_triton
def test_the_batched_decode_kernel_in_the_interpreter(tmp_path):
    """Codes in rows of one staging tensor decode into the pool rows their jobs name, a full group and a
    partial one in one call; rows no job names stay untouched."""
    run_interpreted(
        tmp_path,
        """
        import torch
        from engine.experts.coded import CodeLayout, encode
        from engine.model.coding import bind_device_many
        numel, steps, n = 6000, 32, 10
        layout = CodeLayout(numel, steps)
        g = torch.Generator().manual_seed(3)
        w = (torch.randn((n, numel), generator=g) * 0.02).to(torch.bfloat16)
        w[0, :3] = torch.tensor([0.0, float("inf"), -3.0e38])
        blobs = [encode(r, layout) for r in w]
        stride = -(-max(b.numel() for b in blobs) // 16) * 16
        stages = torch.zeros((n, stride), dtype=torch.uint8)
        for k, b in enumerate(blobs):
            stages[k, : b.numel()] = b
        pool = torch.zeros((n + 2, numel), dtype=torch.bfloat16)
        jobs = [(k, (5 * k + 1) % (n + 2)) for k in range(n)]  # 8 in the first launch, 2 in the second
        bind_device_many(stages, pool, layout)(jobs)
        for k, d in jobs:
            assert torch.equal(pool[d].view(torch.int16), w[k].view(torch.int16)), (k, d)
        named = {d for _, d in jobs}
        assert all(not pool[d].any() for d in range(n + 2) if d not in named)
        print("ok")
        """,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_coded_copies_on_the_gpu():
    """The copy stream, the staging buffers and the decode stream: a cache of 8 slots fed codes of 64
    experts keeps every expert's weights exact."""
    from engine.experts.cache import ExpertCache
    from engine.experts.store import ExpertLayout, ExpertStore

    dev = torch.device("cuda")
    layout = ExpertLayout.from_shapes({"w": (3, 256, 512)}, torch.bfloat16, 64)
    store = ExpertStore(layout, 2, pin=True)
    for layer in range(2):
        store.allocate(layer).normal_(0.0, 0.02)
    attach_coded(store, dev)
    cache = ExpertCache(store, 8, dev)
    for layer in range(2):
        for e0 in range(0, 64, 4):
            ids = list(range(e0, e0 + 4))
            acq = cache.acquire(layer, ids)  # the compute stream waits for the decodes
            got = cache.pool[acq.slots].cpu()
            for e, row in zip(ids, got, strict=True):
                assert torch.equal(row.view(torch.int16), store.row(layer, e).view(torch.int16))
            cache.release(acq)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_decodes_on_the_gpu_past_the_staging_rows_and_after_prefetches():
    """Acquires of 12 experts (more than the STAGING rows: a batch decoded mid-acquire) and predictions
    prefetched a layer ahead (decoded when the prefetch has issued them) keep every expert exact."""
    from engine.experts.cache import ExpertCache
    from engine.experts.copies import STAGING
    from engine.experts.store import ExpertLayout, ExpertStore

    dev = torch.device("cuda")
    layout = ExpertLayout.from_shapes({"w": (2, 384, 512)}, torch.bfloat16, 48)
    store = ExpertStore(layout, 2, pin=True)
    for layer in range(2):
        store.allocate(layer).normal_(0.0, 0.02)
    attach_coded(store, dev)
    cache = ExpertCache(store, 30, dev)
    n = STAGING + 4
    for rnd, e0 in enumerate(range(0, 48 - n + 1, 6)):
        ids = [(e0 + 5 * i) % 48 for i in range(n)]
        cache.prefetch(1, ids[: n // 2])  # the next layer's guess, half of it right
        for layer in (0, 1):
            acq = cache.acquire(layer, ids)
            got = cache.pool[acq.slots].cpu()
            for e, row in zip(ids, got, strict=True):
                assert torch.equal(row.view(torch.int16), store.row(layer, e).view(torch.int16)), (
                    rnd,
                    layer,
                    e,
                )
            cache.release(acq)
