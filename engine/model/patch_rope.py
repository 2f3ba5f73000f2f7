"""The fused RoPE patch: transformers' `apply_rotary_pos_emb`, switchable to the kernel inside the
runner's forwards only.

Activation cannot leak: the reference models of the test suite, and anything else in the process,
call the same modeling modules. `install_fused_rope(model)` replaces the module's function with a
wrapper that calls the original unless `fused_rope_active()` is on (the runner turns it on around its
own forwards, per thread), the tensors are on CUDA, their shapes are ones the kernel handles
(`engine.kernels.fused_rope.supported`), and the kernel was checked at install to reproduce the
original exactly for that dtype on random input (`reproduces`). A family whose function computes
something else (gpt-oss's halves form, DeepSeek-V2's complex form, or none at all) keeps its own, with
one log line. Newer transformers with `kernels` installed hold the function as a `Func` module; its
`forward` is what is checked and wrapped. `uninstall_fused_rope()` puts every replaced function back.

Imports torch and `engine.kernels`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import nn

from engine.kernels.fused_rope import DTYPES, fused_rope, supported
from engine.kernels.triton_guard import triton

log = logging.getLogger(__name__)

NAME = "apply_rotary_pos_emb"
SIGNATURE = ("q", "k", "cos", "sin", "unsqueeze_dim")


def reproduces(
    fn: Callable,
    dtype: torch.dtype,
    device: torch.device,
    head_dim: int,
    heads: int = 4,
    kv_heads: int = 2,
    partial: bool = False,
) -> bool:
    """Whether the kernel gives exactly `fn(q, k, cos, sin)` on random transposed q/k of these sizes.

    `partial` checks the form with cos/sin half as wide as the head. A function that computes
    something else, raises, or returns other shapes or dtypes is not reproduced."""
    r = 2 * (head_dim // 4) if partial else head_dim
    if triton is None or dtype not in DTYPES or head_dim % 2 or r == 0:
        return False
    gen = torch.Generator(device=device).manual_seed(0)
    bsz, t = 2, 3
    q = (
        torch.randn((bsz, t, heads, head_dim), generator=gen, device=device)
        .mul_(3.0)
        .to(dtype)
        .transpose(1, 2)
    )
    k = torch.randn((bsz, t, kv_heads, head_dim), generator=gen, device=device).mul_(3.0).to(dtype)
    k = k.transpose(1, 2)
    angle = torch.rand((bsz, t, r // 2), generator=gen, device=device).mul_(1000.0)
    angle = torch.cat((angle, angle), dim=-1)
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    with torch.no_grad():
        try:
            want = fn(q, k, cos, sin)
        except Exception:  # another form (halves of cos, complex frequencies) rejects these shapes
            return False
        got = fused_rope(q, k, cos, sin)
    if not isinstance(want, tuple) or len(want) != 2:
        return False
    return all(
        isinstance(w, torch.Tensor) and w.shape == g.shape and w.dtype == g.dtype and torch.equal(w, g)
        for w, g in zip(want, got, strict=True)
    )


# ---------------------------------------------------------------- activation

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("fused_rope_active", default=False)


@contextlib.contextmanager
def fused_rope_active() -> Iterator[None]:
    """Let installed wrappers use the kernel inside this block, in this thread (or task) only."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@dataclass
class RopePatch:
    """One modeling module's replaced function: the original, and the checks made against it."""

    module: ModuleType
    original: Callable
    checked: dict[tuple[torch.dtype, bool], bool] = field(default_factory=dict)  # (dtype, partial) -> ok

    def allows(self, dtype: torch.dtype, partial: bool) -> bool:
        return self.checked.get((dtype, partial), False)

    def check(
        self, dtype: torch.dtype, device: torch.device, head_dim: int, heads: int, kv_heads: int
    ) -> bool:
        """Check the full form (and the partial one) for `dtype` once; whether the full form is reproduced."""
        for partial in (False, True):
            if (dtype, partial) not in self.checked:
                self.checked[(dtype, partial)] = reproduces(
                    self.original, dtype, device, head_dim, heads, kv_heads, partial
                )
        return self.allows(dtype, False) or self.allows(dtype, True)


_PATCHES: dict[str, RopePatch] = {}


def _rope_function(fn: object) -> Callable | None:
    """The Python function behind `fn`: itself, or the `forward` of the module that newer transformers
    with `kernels` installed put in its place (`use_kernel_forward_from_hub` makes it a `Func` module)."""
    if isinstance(fn, nn.Module):
        return fn.forward
    return fn if callable(fn) else None


def _has_rope_signature(fn: object) -> bool:
    fn = _rope_function(fn)
    if fn is None:
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return tuple(p.name for p in params) == SIGNATURE and params[-1].default == 1


def _wrapper(patch: RopePatch) -> Callable:
    original = patch.original

    @functools.wraps(_rope_function(original), updated=())
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if (
            _ACTIVE.get()
            and q.is_cuda
            and supported(q, k, cos, sin, unsqueeze_dim)
            and patch.allows(q.dtype, cos.shape[-1] < q.shape[-1])
        ):
            return fused_rope(q, k, cos, sin)
        return original(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.__wrapped__ = original
    apply_rotary_pos_emb._rope_patch = patch
    return apply_rotary_pos_emb


def patch_module(module: ModuleType) -> RopePatch | None:
    """Replace `module.apply_rotary_pos_emb` by the switchable wrapper (once; again returns the same patch).

    Until a check passes (`RopePatch.check`) the wrapper always calls the original. None when the module
    has no function of transformers' signature `(q, k, cos, sin, unsqueeze_dim=1)`."""
    current = getattr(module, NAME, None)
    patch = getattr(current, "_rope_patch", None)
    if patch is not None:
        return patch
    if not _has_rope_signature(current):
        return None
    patch = RopePatch(module, current)
    setattr(module, NAME, _wrapper(patch))
    _PATCHES[module.__name__] = patch
    return patch


def uninstall_fused_rope() -> None:
    """Put every replaced function back."""
    for patch in _PATCHES.values():
        setattr(patch.module, NAME, patch.original)
    _PATCHES.clear()


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """One attention module per modeling module (the file whose `apply_rotary_pos_emb` it calls)."""
    found: dict[str, nn.Module] = {}
    for mod in model.modules():
        if type(mod).__name__.endswith("Attention"):
            found.setdefault(type(mod).__module__, mod)
    return found


def _sizes(attn: nn.Module, model: nn.Module) -> tuple[int | None, int, int]:
    cfg = getattr(attn, "config", None)
    if cfg is None:
        cfg = model.config
    heads = int(getattr(cfg, "num_attention_heads", 0) or 4)
    kv_heads = int(getattr(cfg, "num_key_value_heads", 0) or heads)
    head_dim = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
    if head_dim is None and getattr(cfg, "hidden_size", None):
        head_dim = cfg.hidden_size // heads
    return (int(head_dim) if head_dim else None), heads, kv_heads


def install_fused_rope(model: nn.Module) -> bool:
    """Make the model family's `apply_rotary_pos_emb` switchable to the kernel; whether it now is.

    CUDA with Triton only. Checks the kernel against the original in the model's dtype on its device
    with its head size; a family whose function it does not reproduce is left untouched."""
    if triton is None:
        return False
    found = _attention_modules(model)
    ok = bool(found)
    for name, attn in found.items():
        param = next(attn.parameters(), None)
        module = sys.modules.get(name)
        head_dim, heads, kv_heads = _sizes(attn, model)
        if param is None or param.device.type != "cuda" or module is None or head_dim is None:
            ok = False
            continue
        fresh = getattr(getattr(module, NAME, None), "_rope_patch", None) is None
        patch = patch_module(module)
        if patch is None:
            log.info("%s has no %s(q, k, cos, sin, unsqueeze_dim=1): RoPE stays unfused", name, NAME)
            ok = False
        elif not patch.check(param.dtype, param.device, head_dim, heads, kv_heads):
            log.info("%s keeps its own %s: the fused RoPE does not reproduce it", name, NAME)
            if fresh:
                setattr(module, NAME, patch.original)
                del _PATCHES[name]
            ok = False
    return ok
