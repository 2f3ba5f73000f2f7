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


class _FakeEvent:
    """Stands in for torch.cuda.Event on the CPU: remembers how it was made and how often recorded."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False) -> None:
        self.external = external
        self.records = 0

    def record(self, stream=None) -> None:
        self.records += 1


@pytest.fixture
def fake_cuda_graph(monkeypatch):
    """`GraphCapture` on the CPU: torch.cuda.CUDAGraph replaced by a capture that records nothing (and
    torch.cuda.Event by one that only counts its records), so a test sees where the capture runs each
    piece of a step without a GPU."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
