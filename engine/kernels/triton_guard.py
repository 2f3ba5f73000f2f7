"""Whether Triton is here and where its kernels can run: the one import of Triton the kernels share.

`triton` is the module, or None where it is not installed (CPU builds of torch go without it): every
kernel module defines its kernels under `if triton is not None:`. `triton_available(device)`: CUDA
with Triton. `kernels_run_on(t)`: also CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, read
once at import; the tests run the kernels so).

Imports torch (and Triton where present) only.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds go without it
    import triton
except ImportError:  # pragma: no cover - depends on the install
    triton = None

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


def kernels_run_on(t: torch.Tensor) -> bool:
    """Whether Triton kernels can run on `t`'s device: CUDA with Triton, or CPU under its interpreter."""
    return triton is not None and (t.is_cuda or (_INTERPRETED and t.device.type == "cpu"))
