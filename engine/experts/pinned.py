"""Page-locked host tensors of exactly the size asked for.

torch's pinned allocator (`pin_memory=True`) rounds every allocation up to a power of two and keeps it
cached: a layer of Mixtral-8x7B's experts (2.8 GB) takes 4 GB of locked RAM, so the whole model would
lock 128 GB for 90 GB of weights. Expert stores are allocated once and live as long as the model, so
they take ordinary host memory and lock exactly those pages with `cudaHostRegister`; copies from them
run asynchronously like copies from torch's pinned memory. Where registration is unavailable or
refused, torch's pinned allocator is used instead (with its rounding), and the log says so once.

The pages are also mapped into the GPU's address space (`cudaHostRegisterMapped`), so a kernel can read
them over PCIe without a copy (`device_readable` says whether it can): a captured decode step reads the
experts it finds no slot for straight from the store (`engine.kernels.grouped_experts`).
"""

from __future__ import annotations

import ctypes
import logging
import weakref

import torch

log = logging.getLogger(__name__)

_warned = False
HOST_REGISTER_FLAGS = 0x01 | 0x02  # cudaHostRegisterPortable | cudaHostRegisterMapped
_POINTER_DEVICE_POINTER = 3  # CU_POINTER_ATTRIBUTE_DEVICE_POINTER
_libcuda = None


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
        err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), nbytes, HOST_REGISTER_FLAGS)
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


def _driver():
    global _libcuda
    if _libcuda is None:
        _libcuda = ctypes.CDLL("libcuda.so.1")
    return _libcuda


def device_readable(t: torch.Tensor) -> bool:
    """Whether a CUDA kernel can read host tensor `t` where it lies (page-locked and mapped: the driver
    gives its address a device pointer, which is what Triton's launcher asks for)."""
    if t.is_cuda or not torch.cuda.is_available() or t.numel() == 0:
        return t.is_cuda
    try:
        dev = ctypes.c_uint64(0)
        err = _driver().cuPointerGetAttribute(
            ctypes.byref(dev), _POINTER_DEVICE_POINTER, ctypes.c_uint64(t.data_ptr())
        )
    except OSError:  # no driver library
        return False
    return int(err) == 0 and dev.value != 0
