"""Rotary embeddings whose forward rebuilds its frequencies on the host: one device copy, made once.

PhiMoE's rotary module calls `self.rope_init_fn(self.config)` in every forward, which builds `inv_freq` on
the host, and then moves it to the device: a host-to-device copy from pageable memory, which a CUDA graph
cannot capture (torch refuses it), so every decode step of the family stayed eager (found on an H200:
Phi-mini-MoE decoded at 14.9 tok/s, the plain forward's speed). The call's result depends on the config
alone, so `cache_rope_freqs(model)` gives each such module an instance `rope_init_fn` that answers that
exact call (the config, nothing else) with the original's result moved once to the module's device;
every other call (the dynamic and long-RoPE updates pass a device and a length) goes to the original.
Same values, so the same outputs; a module whose forward does not rebuild its frequencies is left alone.

Imports torch only.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

CALL = "self.rope_init_fn(self.config)"  # what a rebuilding forward's source contains


def rebuilds_freqs(mod: nn.Module) -> bool:
    """Whether `mod` is a rotary module whose forward calls `self.rope_init_fn(self.config)`."""
    if not callable(getattr(mod, "rope_init_fn", None)) or getattr(mod, "config", None) is None:
        return False
    if not isinstance(getattr(mod, "inv_freq", None), torch.Tensor):
        return False
    try:
        source = inspect.getsource(type(mod).forward)
    except (OSError, TypeError):
        return False
    return CALL in source


def _cached(original: Callable, config, device: torch.device) -> Callable:
    inv_freq, scaling = original(config)
    answer = (inv_freq.to(device), scaling)

    def rope_init_fn(*args, **kwargs):
        if not kwargs and len(args) == 1 and args[0] is config:
            return answer
        return original(*args, **kwargs)

    rope_init_fn._rope_freqs_original = original
    return rope_init_fn


def cache_rope_freqs(model: nn.Module) -> int:
    """Give every rotary module of `model` that rebuilds its frequencies per forward a cached device
    copy (on the device of its `inv_freq` buffer); how many modules were changed. Idempotent."""
    n = 0
    for mod in model.modules():
        if not rebuilds_freqs(mod) or hasattr(mod.rope_init_fn, "_rope_freqs_original"):
            continue
        mod.rope_init_fn = _cached(mod.rope_init_fn, mod.config, mod.inv_freq.device)
        n += 1
    if n:
        log.debug("%d rotary modules answer their frequencies from a device copy", n)
    return n
