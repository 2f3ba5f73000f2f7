"""Exact-size page-locked expert stores (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from engine.experts.pinned import page_locked_empty

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_page_locked_tensor_copies_asynchronously_and_exactly():
    host = page_locked_empty((3, 1000), torch.bfloat16)  # 6000 bytes: not a power of two
    assert host.is_pinned()
    host.copy_(torch.arange(3000, dtype=torch.float32).view(3, 1000).to(torch.bfloat16))
    dev = torch.empty((3, 1000), dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        dev.copy_(host, non_blocking=True)
    stream.synchronize()
    assert torch.equal(dev.cpu(), host)
    del host  # the finalizer unregisters before the pages are freed: nothing to observe but no crash
    torch.cuda.synchronize()


def test_a_kernel_reads_the_page_locked_tensor_where_it_lies():
    from engine.experts.pinned import device_readable
    from engine.kernels.grouped_experts import fused_silu_experts
    from engine.kernels.triton_guard import triton

    assert device_readable(page_locked_empty((4, 64), torch.bfloat16))
    assert not device_readable(torch.empty((4, 64), dtype=torch.bfloat16))  # ordinary pageable memory
    if triton is None:
        pytest.skip("needs Triton")
    gen = torch.Generator().manual_seed(0)
    gu, dn = torch.randn(5, 256, 128, generator=gen), torch.randn(5, 128, 128, generator=gen)
    store_gu, store_dn = (
        page_locked_empty(tuple(gu.shape), gu.dtype),
        page_locked_empty(tuple(dn.shape), dn.dtype),
    )
    store_gu.copy_(gu)
    store_dn.copy_(dn)
    x, w = torch.randn(2, 128, device="cuda"), torch.rand(2, 3, device="cuda")
    idx = torch.tensor([[0, 2, 4], [1, 2, 3]], device="cuda")
    table = torch.arange(5, dtype=torch.int32, device="cuda")
    want = fused_silu_experts(
        x, idx, w, table, gu.cuda(), dn.cuda(), up_cfg=(16, 128, 4), down_cfg=("fused", 16, 128, 4)
    )
    gone = torch.tensor([0, -1, -1, 3, -1], dtype=torch.int32, device="cuda")  # 1, 2, 4 only on the host
    log = torch.zeros(6, dtype=torch.int32, device="cuda")
    got = fused_silu_experts(
        x, idx, w, gone, gu.cuda(), dn.cuda(), up_cfg=(16, 128, 4), down_cfg=("fused", 16, 128, 4),
        host=(store_gu, store_dn), slot_log=log,
    )  # fmt: skip
    assert torch.equal(got, want)
    assert log.tolist() == [0, -1, -1, -1, -1, 3]
