"""Fixtures of the runner's CPU tests."""

from __future__ import annotations

import pytest
import torch


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: a capture that records nothing."""

    def capture_begin(self, pool=None, capture_error_mode=None) -> None:
        pass

    def capture_end(self) -> None:
        pass


@pytest.fixture
def fake_cuda_graph(monkeypatch):
    """`GraphCapture` on the CPU: torch.cuda.CUDAGraph replaced by a capture that records nothing, so a
    test sees where the capture runs each piece of a step without a GPU."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
