"""Is an exception raised inside the engine fatal (the device is poisoned) or one request's failure?

A CUDA error that poisons the context (an illegal memory access, a device-side assert) makes every later
call on that device fail too: nothing but a fresh process recovers, so the engine answers everyone and the
process exits. Anything else (a Python error, a bad value, a CPU-side failure, even a CUDA out-of-memory,
which leaves the context usable) fails the requests it touched and the engine keeps serving.

The rule, in order:
1. the exception, or any exception in its `__cause__` / `__context__` chain, is a `torch.AcceleratorError`
   (where this torch has it), or a `RuntimeError` whose message has one of `FATAL_MARKERS`: fatal;
2. otherwise, on a CUDA device, a probe `torch.cuda.synchronize()`: if it raises, the device is poisoned
   (errors from asynchronous kernels surface at the next sync, possibly inside an innocent-looking op): fatal;
3. otherwise not fatal.

Knows nothing about requests; `classify` only reads the exception and runs the probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

FATAL_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "unspecified launch failure")
_ACCELERATOR_ERROR: type[BaseException] | None = getattr(torch, "AcceleratorError", None)

Probe = Callable[[], None]


@dataclass(frozen=True)
class Fault:
    fatal: bool
    cause: str  # "<ExceptionType>: <message>", what logs and error messages show


def describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text and text[0] else type(err).__name__


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and all(cur is not s for s in seen) and len(seen) < 16:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_device_error(err: BaseException) -> bool:
    """Rule 1: the exception chain says the device failed."""
    for e in _chain(err):
        if _ACCELERATOR_ERROR is not None and isinstance(e, _ACCELERATOR_ERROR):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e) for m in FATAL_MARKERS):
            return True
    return False


def device_probe(device: torch.device) -> Probe | None:
    """The sync that reveals a poisoned CUDA context; None on devices without asynchronous errors."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def classify(err: BaseException, probe: Probe | None = None) -> Fault:
    if is_device_error(err):
        return Fault(True, describe(err))
    if probe is not None:
        try:
            probe()
        except Exception as sync_err:  # the device itself no longer answers
            return Fault(True, f"{describe(err)} (then the device sync failed: {describe(sync_err)})")
    return Fault(False, describe(err))
