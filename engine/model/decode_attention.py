"""Decode attention as a transformers attention implementation, for the model the runner owns.

transformers' attention modules call `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` with the
query, the key and value the cache returned, the mask and the module's scaling. `use_decode_attention`
registers one more implementation, "moe_decode", and switches the runner's model (only that model: its
config) to it. The function runs `engine.kernels.decode_kernels.decode_attention` when the call is a plain
decode step it can do, and otherwise calls transformers' own sdpa with the mask it was given, so every
other path computes what it computed before.

How it knows a call is a decode step: the runner passes a `DecodeAttention` with every forward, as the
keyword argument `moe_decode_attention` (transformers hands a forward's extra keyword arguments down to
the attention function). It holds the runner's static KV cache, which says whether this forward is a
decode step and at which positions (`StaticKV.decode_step`), and each layer's sliding window, the one
the runner's mask applies (`MaskBuilder.layer_window`). A call without it (any other caller of the
model) is sdpa.

Not a plain decode step, so sdpa: prefill (of any length), dropout, a soft cap, attention sinks (gpt-oss,
whose models are on eager attention and are never switched), a position bias, no mask, head dims above
`MAX_HEAD_DIM`, dtypes other than float16 / bfloat16 / float32, and tensors the kernels cannot run on.
`DecodeAttention.calls` counts the kernel's calls and each reason for falling back (host-side calls:
a captured graph replays without calling Python). Installed by `engine.model.patches.install`.

Imports torch, transformers and `engine.kernels`.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from engine.kernels.decode_kernels import MAX_HEAD_DIM, decode_attention
from engine.kernels.triton_guard import kernels_run_on

log = logging.getLogger(__name__)

NAME = "moe_decode"  # the attention implementation's name (masks: the same as sdpa's)
KWARG = "moe_decode_attention"  # the forward keyword argument that carries the DecodeAttention
NOT_A_DECODE = "not a decode step"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NOT_DONE = {"softcap": "soft cap", "s_aux": "attention sinks", "position_bias": "position bias"}  # kwargs


class DecodeAttention:
    """What the attention function needs from the runner, and a count of what it ran."""

    def __init__(self, kv, windows: list[int | None]) -> None:
        self.kv = kv  # engine.runner.kv_cache.StaticKV
        self.windows = windows  # per decoder layer: the sliding window its mask applies, or None
        self.calls: Counter[str] = Counter()  # "kernel", or the reason a call went to sdpa

    def unsupported(self, module, query, key, value, attention_mask, dropout, kwargs) -> str | None:
        """Why this call is not a decode step the kernel does (None: it is)."""
        step = self.kv.decode_step()
        if step is None:
            return NOT_A_DECODE
        batch, kv_len, _ = step
        if dropout:
            return "dropout"
        for name, why in _NOT_DONE.items():
            if kwargs.get(name) is not None:
                return why
        if attention_mask is None:
            return "no mask"  # sdpa would attend every key: not what the kernel computes
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int) or not 0 <= layer < len(self.windows):
            return "no layer index"
        b, hq, t, dk = query.shape
        if (
            t != 1
            or b != batch
            or key.shape[:3] != (batch, key.shape[1], kv_len)
            or value.shape[:3] != key.shape[:3]
            or key.shape[3] != dk
            or hq % key.shape[1]
        ):
            return "shape"
        if max(dk, value.shape[3]) > MAX_HEAD_DIM:
            return "head dim"
        if query.dtype not in _DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
            return "dtype"
        if not kernels_run_on(query):
            return f"no Triton kernels on {query.device.type}"
        return None

    def fell_back(self, reason: str) -> None:
        if not self.calls[reason] and reason != NOT_A_DECODE:
            log.info("decode attention: a call went to sdpa (%s)", reason)
        self.calls[reason] += 1


def moe_decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query: [B, Hq, T, Dk]; key: [B, Hk, L, Dk]; value: [B, Hk, L, Dv] -> ([B, T, Hq, Dv], None)."""
    ctx: DecodeAttention | None = kwargs.pop(KWARG, None)
    if ctx is not None:
        reason = ctx.unsupported(module, query, key, value, attention_mask, dropout, kwargs)
        if reason is None:
            _, _, pos = ctx.kv.decode_step()
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            out = decode_attention(query, key, value, pos, scale, ctx.windows[module.layer_idx])
            ctx.calls["kernel"] += 1
            return out, None
        ctx.fell_back(reason)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def register() -> None:
    """Make "moe_decode" a valid attention implementation; models build sdpa's masks for it."""
    AttentionInterface.register(NAME, moe_decode_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_decode_attention(model, kv, windows: list[int | None]) -> DecodeAttention | None:
    """Switch `model` (on sdpa) to "moe_decode"; the DecodeAttention to pass with its forwards, or None
    when the model stays as it is (another implementation, e.g. gpt-oss's eager for its sinks)."""
    impl = model.config._attn_implementation
    if impl not in ("sdpa", NAME):
        log.info("decode attention kernel not used: the model runs %r attention", impl)
        return None
    register()
    if impl != NAME:
        model.set_attn_implementation(NAME)
        if model.config._attn_implementation != NAME:
            log.info("decode attention kernel not used: %s keeps sdpa", type(model).__name__)
            return None
    return DecodeAttention(kv, windows)
