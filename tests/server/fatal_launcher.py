"""Run the real `moe-prefetch serve` (argv are its flags) with decode steps that fail on purpose.

`MOE_TEST_FAULTS` is a comma-separated list, consumed one entry per decode step that has two or more rows
(so at least two requests are in flight when it fails): `value` raises a ValueError (a non-fatal failure of
that batch), `cuda` raises what a poisoned CUDA device raises (`torch.AcceleratorError` where this torch
has it, else the RuntimeError older versions raise). Used by tests/server/test_fatal_exit.py.
"""

from __future__ import annotations

import os
import sys

import torch

from engine.runner.runner import ModelRunner
from moe_prefetch.cli import main

ILLEGAL = "CUDA error: an illegal memory access was encountered"


def fault(kind: str) -> Exception:
    if kind == "value":
        return ValueError("injected decode failure")
    error = getattr(torch, "AcceleratorError", RuntimeError)
    try:
        return error(ILLEGAL)
    except TypeError:  # not constructible from a message in this torch
        return RuntimeError(ILLEGAL)


def inject(faults: list[str]) -> None:
    real = ModelRunner.decode

    def decode(self, tokens, positions):
        if len(tokens) >= 2 and faults:
            raise fault(faults.pop(0))
        return real(self, tokens, positions)

    ModelRunner.decode = decode


if __name__ == "__main__":
    inject([f for f in os.environ.get("MOE_TEST_FAULTS", "").split(",") if f])
    sys.argv = ["moe-prefetch", "serve", *sys.argv[1:]]
    main()
