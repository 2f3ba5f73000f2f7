"""The static KV cache: every layer's keys and values for `rows` sequences of up to `max_len` tokens.

Shapes never change after the first write, so a decode step can be captured once as a CUDA graph and
replayed. It speaks the one method transformers' attention modules call on a cache,
`update(key_states, value_states, layer_idx)`, and is told before each forward what that forward is:

- `set_prefill(row, start, length)`: one sequence's `length` new tokens at positions `start...`,
  written into row `row`; attention sees that row's first `start + length` positions.
- `set_decode(batch, kv_len, pos)`: one new token for each of rows `0..batch-1`, row b at position
  `pos[b]` (a device tensor, so a captured graph reads the positions of the step it replays);
  attention sees each row's first `kv_len` positions, the mask hides the ones past `pos[b]`.
  `decode_step()` tells the attention function so (`engine.model.decode_attention`), which then needs no mask.

At decode, on CUDA with Triton, one kernel writes every row's new key and value
(`engine.kernels.decode_kernels.write_step_kv`); elsewhere two `index_put_` do the same copy.

Rows are compact: sequences that decode together occupy rows 0..n-1 (`move_row` fills a hole).
Buffers are allocated on first write (prefill always comes first), with whatever per-layer shapes the
family uses (multi-head, grouped, MLA latents), and zeroed, so unused positions are finite numbers.
Knows nothing about requests or experts.
"""

from __future__ import annotations

import torch

from engine.kernels.decode_kernels import write_step_kv
from engine.kernels.triton_guard import kernels_run_on, triton_available
from engine.model.decode_attention import NAME as DECODE_ATTENTION

# Shapes: R = rows, B = rows in a step, H = kv heads, L = max_len, D = head dim, t = new tokens.


class StaticKV:
    is_compileable = False  # transformers must not try to compile around it
    is_sliding = [False]  # read by transformers' mask functions before they take the 4-D mask as given

    def __init__(
        self, rows: int, max_len: int, device: torch.device, fused_write: bool | None = None
    ) -> None:
        """fused_write: decode steps write with the Triton kernel where it can run (None: on CUDA with
        Triton; True also on CPU under Triton's interpreter, for tests; False: never)."""
        if rows < 1 or max_len < 1:
            raise ValueError("a static KV cache needs at least one row and one position")
        self.rows = rows
        self.max_len = max_len
        self.device = device
        self.fused_write = triton_available(device) if fused_write is None else fused_write
        self.keys: list[torch.Tensor | None] = []  # per layer [R, H, L, Dk]
        self.values: list[torch.Tensor | None] = []  # per layer [R, H, L, Dv]
        self._mode: tuple = ()
        self._batch_index: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------- what the next forward is
    def set_prefill(self, row: int, start: int, length: int) -> None:
        if not 0 <= row < self.rows:
            raise IndexError(f"KV row {row} outside 0..{self.rows - 1}")
        if start + length > self.max_len:
            raise ValueError(f"{start + length} positions do not fit a KV cache of {self.max_len}")
        self._mode = ("prefill", row, start, length)

    def set_decode(self, batch: int, kv_len: int, pos: torch.Tensor) -> None:
        if not 1 <= batch <= self.rows or not 1 <= kv_len <= self.max_len:
            raise ValueError(f"decode of {batch} rows over {kv_len} positions does not fit this KV cache")
        idx = self._batch_index.get(batch)
        if idx is None:
            idx = self._batch_index[batch] = torch.arange(batch, device=self.device)
        self._mode = ("decode", batch, kv_len, pos, idx)

    def decode_step(self) -> tuple[int, int, torch.Tensor] | None:
        """(rows, kv_len, positions [B]) while the next forward is a decode step; None otherwise."""
        if not self._mode or self._mode[0] != "decode":
            return None
        return self._mode[1], self._mode[2], self._mode[3]

    # ---------------------------------------------------------------- the transformers side
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        # key_states: [b, H, t, Dk]; value_states: [b, H, t, Dv]
        if not self._mode:
            raise RuntimeError("StaticKV: set_prefill or set_decode must come before a forward")
        keys, values = self._layer(layer_idx, key_states, value_states)
        if self._mode[0] == "prefill":
            _, row, start, length = self._mode
            keys[row, :, start : start + length] = key_states[0]  # [H, t, Dk]
            values[row, :, start : start + length] = value_states[0]
            end = start + length
            return keys[row : row + 1, :, :end], values[row : row + 1, :, :end]
        _, batch, kv_len, pos, idx = self._mode
        if (
            self.fused_write
            and key_states.dtype == keys.dtype
            and value_states.dtype == values.dtype
            and kernels_run_on(keys)
        ):
            write_step_kv(keys, values, key_states, value_states, pos)  # rows 0..B-1, one launch
        else:
            # [R, L, H, D] views: (row, position) pairs index the first two dims
            keys.transpose(1, 2).index_put_((idx, pos), key_states[:, :, 0])  # [B, H, Dk]
            values.transpose(1, 2).index_put_((idx, pos), value_states[:, :, 0])
        return keys[:batch, :, :kv_len], values[:batch, :, :kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Only reached when a caller leaves out position_ids, which the runner never does."""
        raise RuntimeError("StaticKV: positions are always passed explicitly")

    # ---------------------------------------------------------------- rows
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row `src`'s first `length` positions of every layer into row `dst`."""
        if src == dst or length <= 0:
            return
        for t in (*self.keys, *self.values):
            if t is not None:
                t[dst, :, :length].copy_(t[src, :, :length])

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def _layer(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.keys) <= i:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[i] is None:
            self.keys[i] = torch.zeros(
                (self.rows, k.shape[1], self.max_len, k.shape[3]), dtype=k.dtype, device=self.device
            )
            self.values[i] = torch.zeros(
                (self.rows, v.shape[1], self.max_len, v.shape[3]), dtype=v.dtype, device=self.device
            )
        return self.keys[i], self.values[i]


# ----------------------------------------------------------------------------- attention masks
class MaskBuilder:
    """The 4-D attention masks the model's layers get, built from positions on the device.

    transformers uses a 4-D mask as given. Layers of type "sliding_attention" (a `layer_types` list in
    the config) get a dict of masks by type, as those families expect; a model-wide `sliding_window`
    narrows the single mask. sdpa takes booleans (True = attend), eager an additive float mask; the
    decode attention ("moe_decode") hands every call it does not do itself to sdpa, so it gets booleans.
    """

    def __init__(self, config, dtype: torch.dtype, device: torch.device) -> None:
        impl = getattr(config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager", DECODE_ATTENTION):
            raise ValueError(f"the static KV runner supports sdpa and eager attention, not {impl!r}")
        self.additive = impl == "eager"
        self.dtype = dtype
        self.device = device
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        self.by_type = bool(types) and isinstance(types, (list, tuple))
        self.types = list(types) if self.by_type else []
        self.window = window if window else None
        self._arange: torch.Tensor | None = None
        self._zero = torch.zeros((), dtype=dtype, device=device)  # additive-mask values, made once
        self._low = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of decoder layer `layer`'s mask (keys j > q - window), None if causal only."""
        if self.by_type and self.types[layer] != "sliding_attention":
            return None
        return self.window

    def _j(self, n: int) -> torch.Tensor:
        if self._arange is None or self._arange.numel() < n:
            self._arange = torch.arange(max(n, 64), device=self.device)
        return self._arange[:n]

    def _finish(self, allowed: torch.Tensor) -> torch.Tensor:
        # allowed: [B, Q, K] bool -> [B, 1, Q, K]
        allowed = allowed[:, None]
        if not self.additive:
            return allowed
        return torch.where(allowed, self._zero, self._low)

    def build(self, q_pos: torch.Tensor, kv_len: int):
        """q_pos: [B, Q] positions of the queries -> the mask (or dict of masks) over kv_len keys."""
        j = self._j(kv_len)[None, None, :]  # [1, 1, K]
        q = q_pos[:, :, None]  # [B, Q, 1]
        causal = j <= q  # [B, Q, K]
        windowed = causal & (j > q - self.window) if self.window else causal
        if self.by_type:
            return {"full_attention": self._finish(causal), "sliding_attention": self._finish(windowed)}
        return self._finish(windowed)
