"""Exact-size page-locked expert stores (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from engine.pinned import page_locked_empty

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
