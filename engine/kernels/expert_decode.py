"""The decoder of coded experts (`engine.experts.coded`) as one Triton launch: a coded expert's blob, just
copied to the device, becomes its bf16 weights in a cache slot.

One program per block of LANES x steps weights. At step i every lane reads the 44 bits from its stream's
bit position (two words), looks the next MAX_BITS bits up in the row's table (symbol and code length),
advances by the length and writes weight (block, i, lane) from the symbol and the raw byte, so the lanes'
stores and their raw reads are contiguous. The steps of a lane form a dependency chain (the bit position);
the lanes and blocks are independent, so a row decodes in one wave of about numel / (LANES x steps)
programs.

`decode_launch(raw, starts, table, words, out, numel, steps, lanes, max_bits)` launches it on the current
stream, given the blob's parts (`engine.experts.coded.CodeLayout.parts`) and the code's constants, where
Triton runs on `out`'s device (`kernels_run_on`: CUDA, or CPU tensors under Triton's interpreter).
Measured on an H200 (`bench/coded_experts.py`): docs/performance.md, "Coded expert copies".

Imports torch and (where it runs) Triton only.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _decode_kernel(raw, starts, table, words, out, numel, MAX: tl.constexpr, LANES_: tl.constexpr,
                       STEPS_: tl.constexpr):  # fmt: skip
        block = tl.program_id(0)
        lane = tl.arange(0, LANES_)
        start = tl.load(starts + block * LANES_ + lane)
        bitpos = tl.zeros([LANES_], dtype=tl.int32)
        base = block * LANES_ * STEPS_
        for i in range(STEPS_):
            w = start + (bitpos >> 5)
            hi = tl.load(words + w).to(tl.uint32, bitcast=True).to(tl.uint64)
            lo = tl.load(words + w + 1).to(tl.uint32, bitcast=True).to(tl.uint64)
            shift = (64 - MAX - (bitpos & 31)).to(tl.uint64)
            idx = (((hi << 32) | lo) >> shift).to(tl.int32) & ((1 << MAX) - 1)
            ent = tl.load(table + idx).to(tl.int32)
            bitpos += ent >> 8
            at = base + i * LANES_ + lane
            keep = at < numel
            r = tl.load(raw + at, mask=keep, other=0).to(tl.int32)
            tl.store(out + at, (((r & 0x80) << 8) | ((ent & 0xFF) << 7) | (r & 0x7F)).to(tl.int16), mask=keep)


def decode_launch(
    raw: torch.Tensor,
    starts: torch.Tensor,
    table: torch.Tensor,
    words: torch.Tensor,
    out: torch.Tensor,
    numel: int,
    steps: int,
    lanes: int,
    max_bits: int,
) -> None:
    """Decode one coded row into `out` (int16 view of bf16 [numel]): raw uint8, starts int32 [blocks * lanes],
    table int16 [2^max_bits], words int32, all on `out`'s device."""
    if triton is None:
        raise RuntimeError("the coded-expert decoder needs Triton, which this build of torch lacks")
    blocks = starts.numel() // lanes
    _decode_kernel[(blocks,)](raw, starts, table, words, out, numel, MAX=max_bits, LANES_=lanes, STEPS_=steps)
