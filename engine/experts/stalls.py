"""Stall timing on CUDA: how long the compute stream waited for expert copies, one observation per
layer-step, measured with timing events around its waits and read back lazily (after a step).

Imports torch and `engine.experts.slots` only.
"""

from __future__ import annotations

import torch

from engine.experts.slots import Acquired


class StallTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: list[list[tuple[torch.cuda.Event, torch.cuda.Event]]] = []

    def wait(self, waits: list[torch.cuda.Event], acq: Acquired) -> None:
        """Make the compute stream wait on `waits`, timed as part of `acq`'s stall."""
        if not waits:
            return
        stream = torch.cuda.current_stream(self.device)
        before = torch.cuda.Event(enable_timing=True)
        after = torch.cuda.Event(enable_timing=True)
        before.record(stream)
        for ev in waits:
            stream.wait_event(ev)
        after.record(stream)
        acq.stalls.append((before, after))

    def close(self, acq: Acquired) -> bool:
        """End `acq`'s layer-step: its waits become one pending observation. False if it waited on
        nothing (a stall of zero, known now)."""
        if acq.stalls:
            self._pending.append(acq.stalls)
            acq.stalls = []
            return True
        return False

    def flush(self) -> list[float]:
        """The stall times whose events completed, in seconds (the others stay pending)."""
        out, keep = [], []
        for pairs in self._pending:
            if pairs[-1][1].query():
                out.append(sum(before.elapsed_time(after) for before, after in pairs) / 1000.0)
            else:
                keep.append(pairs)
        self._pending = keep
        return out
