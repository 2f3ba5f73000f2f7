"""Losslessly coded expert weights for the copy path, and how fast a GPU decodes them (issue #17; docs/performance.md
"What the targets need in bytes"): a measuring instrument for the next GPU session, not the engine's copy path.

    python bench/coded_experts.py --out bench/results          # on a GPU: encode, decode, check, time -> coded_experts.json
    python bench/coded_experts.py --device cpu --weights 65536  # the CPU check (torch's reference decoder only)

A bf16 weight is sign, 8 exponent and 7 mantissa bits. The code keeps sign and mantissa as one raw byte per
weight and codes the exponent byte with a canonical Huffman code of at most MAX_BITS bits (about 2.7 bits a
weight on trained or normally initialised experts: `bench/expert_entropy.py`), so a coded expert is ~0.67 of
its bf16 bytes and decodes to the same bits.

Layout, made for a GPU to decode in parallel with coalesced writes: the weights are cut into blocks of
LANES x STEPS; in a block, lane l codes weights l, l + LANES, l + 2 LANES, ... (STEPS of them) into its own
bit stream (MSB first in 32-bit words, starting on a word boundary). A decoder program takes one block: at
step i every lane reads the next code from its stream (a 2^MAX_BITS-entry table gives symbol and length) and
writes weight i * LANES + l, so the lanes' writes, and their reads of the raw byte, are contiguous.

`decode_torch` is the reference (vectorised over the lanes, any device); `decode_triton` is one Triton launch
(`_decode_kernel`), tested in Triton's interpreter on the CPU and timed here on a GPU against a plain copy of
the same bf16 bytes. Imports numpy, torch and (where present) Triton.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.experts.coded import MAX_BITS, canonical_codes, huffman_lengths

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch
    triton = None

ROOT = Path(__file__).resolve().parents[1]
LANES = 128
STEPS = 256  # weights a lane decodes per block


# the code's Huffman lengths and canonical values are the engine's (engine.experts.coded)
_huffman_lengths, _canonical = huffman_lengths, canonical_codes


@dataclass
class Coded:
    """One coded tensor: `numel` bf16 weights in `blocks` blocks of LANES x STEPS (the tail padded to a whole
    block: a tensor of fewer than ~100k weights codes larger than its bf16 bytes)."""

    numel: int
    shape: tuple[int, ...]
    raw: torch.Tensor  # uint8 [blocks * LANES * STEPS]: sign << 7 | mantissa, in weight order
    words: torch.Tensor  # int32 [W + 1]: every lane's bit stream, one after another, then one zero word
    starts: torch.Tensor  # int32 [blocks * LANES]: the first word of each lane's stream
    table_sym: torch.Tensor  # uint8 [2^MAX_BITS]: the symbol whose code prefixes each MAX_BITS-bit window
    table_len: torch.Tensor  # uint8 [2^MAX_BITS]: that code's length

    @property
    def blocks(self) -> int:
        return self.starts.numel() // LANES

    def nbytes(self) -> int:
        """Bytes a copy moves: the raw bytes, the streams, the starts and the table."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def to(self, device) -> Coded:
        return Coded(self.numel, self.shape, *(t.to(device) for t in self._tensors()))

    def _tensors(self):
        return self.raw, self.words, self.starts, self.table_sym, self.table_len


def encode(weights: torch.Tensor) -> Coded:
    """The code of a bf16 tensor (any shape), built on the host."""
    bits = (
        weights.detach().to(torch.bfloat16).contiguous().view(torch.int16).flatten().numpy().view(np.uint16)
    )
    n = bits.size
    per_block = LANES * STEPS
    blocks = max(1, -(-n // per_block))
    padded = np.zeros(blocks * per_block, dtype=np.uint16)
    padded[:n] = bits
    exp = ((padded >> 7) & 0xFF).astype(np.int64)
    raw = (((padded >> 8) & 0x80) | (padded & 0x7F)).astype(np.uint8)
    lengths = _huffman_lengths(np.bincount(exp, minlength=256))
    codes = _canonical(lengths)
    table_sym = np.zeros(1 << MAX_BITS, dtype=np.uint8)
    table_len = np.zeros(1 << MAX_BITS, dtype=np.uint8)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (MAX_BITS - int(lengths[s]))
        hi = lo + (1 << (MAX_BITS - int(lengths[s])))
        table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
    # symbol j of lane l in block b is weight b * per_block + j * LANES + l: lane-major order
    lane_exp = exp.reshape(blocks, STEPS, LANES).transpose(0, 2, 1).reshape(blocks * LANES, STEPS)
    lens, vals = lengths[lane_exp], codes[lane_exp]
    ends = np.cumsum(lens, axis=1)
    pos = ends - lens  # bit position of each code in its lane's stream
    stream_words = (ends[:, -1] + 31) // 32
    starts = np.concatenate([[0], np.cumsum(stream_words)[:-1]])
    # the decoder reads one word past a code's own: the next lane's first word, or this zero word at the end
    # (bits past a code never change its table entry)
    words = np.zeros(int(stream_words.sum()) + 1, dtype=np.uint64)
    word = starts[:, None] + pos // 32
    off = pos % 32
    fits = off + lens <= 32
    np.add.at(words, word[fits], (vals[fits] << (32 - off[fits] - lens[fits])).astype(np.uint64))
    s = ~fits  # a code across a word boundary: its high bits end this word, its low bits start the next
    spill = off[s] + lens[s] - 32
    np.add.at(words, word[s], (vals[s] >> spill).astype(np.uint64))
    np.add.at(words, word[s] + 1, ((vals[s] << (32 - spill)) & 0xFFFFFFFF).astype(np.uint64))
    return Coded(
        numel=n,
        shape=tuple(weights.shape),
        raw=torch.from_numpy(raw),
        words=torch.from_numpy(words.astype(np.uint32).view(np.int32)),
        starts=torch.from_numpy(starts.astype(np.int32)),
        table_sym=torch.from_numpy(table_sym),
        table_len=torch.from_numpy(table_len),
    )


def _assemble(raw: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """int32 bf16 bit patterns from the raw byte (sign, mantissa) and the exponent."""
    raw = raw.to(torch.int32)
    return ((raw & 0x80) << 8) | (exp.to(torch.int32) << 7) | (raw & 0x7F)


def _bf16(bits: torch.Tensor, coded: Coded) -> torch.Tensor:
    return bits[: coded.numel].to(torch.int16).view(torch.bfloat16).reshape(coded.shape)


def decode_torch(coded: Coded) -> torch.Tensor:
    """The reference decoder: STEPS steps, each reading the next code of every lane at once."""
    dev = coded.words.device
    lanes = coded.blocks * LANES
    words = coded.words.to(torch.int64) & 0xFFFFFFFF
    bitpos = torch.zeros(lanes, dtype=torch.int64, device=dev)
    starts = coded.starts.to(torch.int64)
    exps = torch.empty((lanes, STEPS), dtype=torch.int64, device=dev)
    sym, ln = coded.table_sym.to(torch.int64), coded.table_len.to(torch.int64)
    for i in range(STEPS):
        w, off = starts + (bitpos >> 5), bitpos & 31
        window = ((words[w] << off) & 0xFFFFFFFF) | (words[w + 1] >> (32 - off))  # the 32 bits from bitpos
        idx = window >> (32 - MAX_BITS)
        exps[:, i] = sym[idx]
        bitpos += ln[idx]
    exp = exps.reshape(coded.blocks, LANES, STEPS).transpose(1, 2).reshape(-1)
    return _bf16(_assemble(coded.raw, exp), coded)


if triton is not None:

    @triton.jit
    def _decode_kernel(raw, words, starts, table_sym, table_len, out, MAX: tl.constexpr, LANES_: tl.constexpr,
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
            e = tl.load(table_sym + idx).to(tl.int32)
            bitpos += tl.load(table_len + idx).to(tl.int32)
            at = base + i * LANES_ + lane
            r = tl.load(raw + at).to(tl.int32)
            tl.store(out + at, (((r & 0x80) << 8) | (e << 7) | (r & 0x7F)).to(tl.int16))


def decode_triton(coded: Coded, out: torch.Tensor | None = None) -> torch.Tensor:
    """One Triton launch: a program per block. `out`: int16 [blocks * LANES * STEPS] to decode into."""
    if triton is None:
        raise RuntimeError("decode_triton needs Triton, which this build of torch lacks")
    if out is None:
        out = torch.empty(coded.blocks * LANES * STEPS, dtype=torch.int16, device=coded.words.device)
    _decode_kernel[(coded.blocks,)](
        coded.raw, coded.words, coded.starts, coded.table_sym, coded.table_len, out,
        MAX=MAX_BITS, LANES_=LANES, STEPS_=STEPS,
    )  # fmt: skip
    return out[: coded.numel].view(torch.bfloat16).reshape(coded.shape)


def _time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", type=int, default=3 * 768 * 2048, help="one Qwen3-30B-A3B expert by default")
    ap.add_argument("--experts", type=int, default=8, help="experts decoded by one launch (timing)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(args.weights * args.experts, generator=g) * args.std).to(torch.bfloat16)
    t0 = time.perf_counter()
    coded = encode(w)
    rec = {
        "kind": "coded_experts",
        "command": "python bench/coded_experts.py" + (" " + " ".join(argv) if argv else ""),
        "weights": w.numel(),
        "experts": args.experts,
        "encode_s": round(time.perf_counter() - t0, 2),
        "bf16_bytes": 2 * w.numel(),
        "coded_bytes": coded.nbytes(),
        "ratio": round(coded.nbytes() / (2 * w.numel()), 4),
    }
    dev = torch.device(args.device)
    c = coded.to(dev)
    rec["reference_exact"] = bool(torch.equal(decode_torch(c).cpu().view(torch.int16), w.view(torch.int16)))
    if dev.type == "cuda" and triton is not None:
        rec["device"] = torch.cuda.get_device_name(dev)
        got = decode_triton(c)
        rec["triton_exact"] = bool(torch.equal(got.cpu().view(torch.int16), w.view(torch.int16)))
        out = torch.empty(c.blocks * LANES * STEPS, dtype=torch.int16, device=dev)
        ms = _time_ms(lambda: decode_triton(c, out), args.reps)
        src, dst = w.to(dev), torch.empty_like(w, device=dev)
        copy_ms = _time_ms(lambda: dst.copy_(src), args.reps)
        rec.update(
            decode_ms=round(ms, 4),
            decode_output_gbs=round(2 * w.numel() / ms / 1e6, 1),
            device_copy_ms=round(copy_ms, 4),
            device_copy_gbs=round(2 * 2 * w.numel() / copy_ms / 1e6, 1),  # read + write
        )
    print(json.dumps(rec))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "coded_experts.json").write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
