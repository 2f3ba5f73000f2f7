"""The decoder of coded experts (`engine.experts.coded`) as one Triton launch: a coded expert's blob, just
copied to the device, becomes its bf16 weights in a cache slot.

One program per block of LANES x steps weights. At step i every lane reads the 44 bits from its stream's
bit position (two words), looks the next MAX_BITS bits up in the row's table (symbol and code length),
advances by the length and writes weight (block, i, lane) from the symbol and the raw byte, so the lanes'
stores and their raw reads are contiguous. The steps of a lane form a dependency chain (the bit position);
the lanes and blocks are independent, so a row decodes in one wave of about numel / (LANES x steps)
programs.

`decode_launch(raw, starts, table, words, out, numel, steps, lanes, max_bits)` launches it on the current
stream for one code; `decode_many_launch` decodes up to GROUP codes, each in a row of one staging tensor,
into rows of the cache's pool in one launch (a second grid axis over the codes), so a layer's copies pay
one launch, not one each. Both take the blob's parts (`engine.experts.coded.CodeLayout.parts`, or their
offsets) and the code's constants, and run where Triton runs on `out`'s device (`kernels_run_on`: CUDA, or
CPU tensors under Triton's interpreter).
Measured on an H200 (`bench/coded_experts.py`): docs/performance.md, "Coded expert copies".

Imports torch and (where it runs) Triton only.
"""

from __future__ import annotations

import torch

from engine.kernels.triton_guard import triton

GROUP = 8  # codes one batched launch decodes (`decode_many_launch`)

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

    @triton.jit(do_not_specialize=["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7",
                                   "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"])  # fmt: skip
    def _decode_many_kernel(stages, stage_stride, out, out_stride, numel, starts_at, table_at, words_at,
                            k0, k1, k2, k3, k4, k5, k6, k7, d0, d1, d2, d3, d4, d5, d6, d7,
                            MAX: tl.constexpr, LANES_: tl.constexpr, STEPS_: tl.constexpr):  # fmt: skip
        # program (block, j): block `block` of job j, the code in stage row k_j decoded into out row d_j
        block = tl.program_id(0)
        j = tl.program_id(1)
        k = tl.where(j == 0, k0, tl.where(j == 1, k1, tl.where(j == 2, k2, tl.where(j == 3, k3,
            tl.where(j == 4, k4, tl.where(j == 5, k5, tl.where(j == 6, k6, k7)))))))  # fmt: skip
        d = tl.where(j == 0, d0, tl.where(j == 1, d1, tl.where(j == 2, d2, tl.where(j == 3, d3,
            tl.where(j == 4, d4, tl.where(j == 5, d5, tl.where(j == 6, d6, d7)))))))  # fmt: skip
        base = stages + k.to(tl.int64) * stage_stride
        raw = base
        starts = (base + starts_at).to(tl.pointer_type(tl.int32))
        table = (base + table_at).to(tl.pointer_type(tl.int16))
        words = (base + words_at).to(tl.pointer_type(tl.int32))
        dst = out + d.to(tl.int64) * out_stride
        lane = tl.arange(0, LANES_)
        start = tl.load(starts + block * LANES_ + lane)
        bitpos = tl.zeros([LANES_], dtype=tl.int32)
        first = block * LANES_ * STEPS_
        for i in range(STEPS_):
            w = start + (bitpos >> 5)
            hi = tl.load(words + w).to(tl.uint32, bitcast=True).to(tl.uint64)
            lo = tl.load(words + w + 1).to(tl.uint32, bitcast=True).to(tl.uint64)
            shift = (64 - MAX - (bitpos & 31)).to(tl.uint64)
            idx = (((hi << 32) | lo) >> shift).to(tl.int32) & ((1 << MAX) - 1)
            ent = tl.load(table + idx).to(tl.int32)
            bitpos += ent >> 8
            at = first + i * LANES_ + lane
            keep = at < numel
            r = tl.load(raw + at, mask=keep, other=0).to(tl.int32)
            tl.store(dst + at, (((r & 0x80) << 8) | ((ent & 0xFF) << 7) | (r & 0x7F)).to(tl.int16), mask=keep)


def decode_many_launch(
    stages: torch.Tensor,
    out: torch.Tensor,
    jobs: list[tuple[int, int]],
    numel: int,
    blocks: int,
    offsets: tuple[int, int, int],
    steps: int,
    lanes: int,
    max_bits: int,
) -> None:
    """Decode the codes in rows `k` of `stages` (uint8 [K, stride], each row a blob) into rows `d` of `out`
    (int16 [S, numel]) for every (k, d) of `jobs`, GROUP jobs a launch; `offsets`: the blob's starts, table
    and words offsets (`CodeLayout`), `blocks` its blocks."""
    if triton is None:
        raise RuntimeError("the coded-expert decoder needs Triton, which this build of torch lacks")
    starts_at, table_at, words_at = offsets
    for g in range(0, len(jobs), GROUP):
        group = jobs[g : g + GROUP]
        ks = [k for k, _ in group] + [group[0][0]] * (GROUP - len(group))
        ds = [d for _, d in group] + [group[0][1]] * (GROUP - len(group))
        _decode_many_kernel[(blocks, len(group))](
            stages, stages.stride(0), out, out.stride(0), numel, starts_at, table_at, words_at, *ks, *ds,
            MAX=max_bits, LANES_=lanes, STEPS_=steps,
        )  # fmt: skip


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
