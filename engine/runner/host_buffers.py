"""Page-locked host memory that captured decode segments write their small results into (`HostArena`).

A segmented step's host reads each MoE layer's routed ids and each prefetch tap's id table. Copying them
inside the captured segment (a memcpy node, then an external event the host waits on) costs no launch of
its own, and lets a prediction's table be read while the rest of its segment (the layer's attention and
router) still runs, with no graph segment ending at the tap. The buffers must exist before a capture
starts (registering memory inside one is not allowed) and lie outside torch's pinned allocator, which
would record its own events on them inside the capture; so they are carved from one block of registered
memory (`engine.experts.pinned.page_locked_empty`). Every captured step shape carves the same offsets:
steps run one at a time and the host reads a step's results before the next step is launched, as the
graphs' shared memory pool already requires.

Imports torch and `engine.experts.pinned` only.
"""

from __future__ import annotations

import math

import torch

from engine.experts.pinned import page_locked_empty

ALIGN = 64  # bytes: each buffer starts on its own cache line


class HostArena:
    """`nbytes` of page-locked host memory, handed out in order by `take` and rewound by `rewind`."""

    def __init__(self, nbytes: int, pinned: bool = True) -> None:
        """pinned=False: ordinary memory (the capture's CPU tests, where nothing is registered)."""
        self.block = (
            page_locked_empty((nbytes,), torch.uint8) if pinned else torch.empty(nbytes, dtype=torch.uint8)
        )
        self.nbytes = nbytes
        self._at = 0

    @classmethod
    def sized(cls, layers: int, rows: int, experts: int, top_k: int, pinned: bool = True) -> HostArena:
        """An arena for steps of up to `rows` rows: per MoE layer its routed ids [rows, top_k] and one
        prediction table [rows, experts + 1] (the widest a policy makes), int64, each aligned."""
        return cls(layers * (rows * (top_k + experts + 1) * 8 + 2 * ALIGN), pinned)

    def rewind(self) -> None:
        """The next capture carves from the start again (its step shape replaces the last one's use)."""
        self._at = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A page-locked host tensor of `shape` and `dtype`, contiguous, from the next free bytes."""
        size = math.prod(shape) * dtype.itemsize
        start = -(-self._at // ALIGN) * ALIGN
        if start + size > self.nbytes:
            raise MemoryError(
                f"host arena: {size} bytes asked at offset {start} of {self.nbytes} (a step wider than sized)"
            )
        self._at = start + size
        return self.block[start : start + size].view(dtype).view(shape)
