"""Whole-step graphs' accounting, one step late: the routing log of step t is read after step t+1 is
launched, so the GPU never waits for the host between steps. Two events and two sets of pinned log
buffers are used in turn; `settle` waits for every launched step and accounts its log in the cache.

CUDA only (nothing is ever pending on the CPU). Imports `engine.runner.graphs` and `engine.experts`.
"""

from __future__ import annotations

import torch

from engine.experts.cache import ExpertCache
from engine.runner.graphs import GraphReplayer, StepGraph


class DeferredSteps:
    def __init__(self, cuda: bool) -> None:
        self._done = [torch.cuda.Event(), torch.cuda.Event()] if cuda else []
        self._turn = 0
        self._pending: list[tuple[StepGraph, dict | None, int, torch.cuda.Event]] = []

    def launched(self, sg: StepGraph, n: int, cache: ExpertCache) -> None:
        """`sg` (with `n` real rows) was just replayed: queue its logs' copies, settle the previous step."""
        turn = self._turn
        self._turn ^= 1
        host = sg.copy_logs(turn) if sg.logs else None
        self._done[turn].record()
        self.settle(cache)  # the previous step's logs, while this one runs
        self._pending.append((sg, host, n, self._done[turn]))

    def settle(self, cache: ExpertCache) -> None:
        """Account the launched whole-step graphs' routing, waiting for them to have run."""
        while self._pending:
            sg, host, n, done = self._pending.pop(0)
            done.synchronize()
            if host is None:
                continue
            if sg.stream:
                GraphReplayer(cache).account_streamed_step(sg, host, n)
            else:
                GraphReplayer(cache).account_whole_step(host, n)
