"""Page-locked host tensors of exactly the size asked for.

torch's pinned allocator (`pin_memory=True`) rounds every allocation up to a power of two and keeps it
cached: a layer of Mixtral-8x7B's experts (2.8 GB) takes 4 GB of locked RAM, so the whole model would
lock 128 GB for 90 GB of weights. Expert stores are allocated once and live as long as the model, so
they take ordinary host memory and lock exactly those pages with `cudaHostRegister`; copies from them
run asynchronously like copies from torch's pinned memory. Where registration is unavailable or
refused, torch's pinned allocator is used instead (with its rounding), and the log says so once.
"""

from __future__ import annotations

import logging
import weakref

import torch

log = logging.getLogger(__name__)

_warned = False


def _unregister(ptr: int) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # interpreter shutdown: the driver releases everything anyway
        pass


def page_locked_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised host tensor whose pages are locked for asynchronous copies to the GPU."""
    global _warned
    buf = torch.empty(shape, dtype=dtype)
    nbytes = buf.numel() * buf.element_size()
    if nbytes == 0:
        return buf
    try:
        err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), nbytes, 0)
        ok = int(err) == 0
    except Exception as exc:  # no CUDA runtime binding
        ok, err = False, exc
    if not ok:
        if not _warned:
            log.warning("cudaHostRegister failed (%s): using torch's pinned allocator, which rounds up", err)
            _warned = True
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    weakref.finalize(buf, _unregister, buf.data_ptr())  # before the pages go back to the allocator
    return buf
