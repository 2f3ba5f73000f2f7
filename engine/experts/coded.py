"""Coded experts: a lossless code of a bf16 expert row that copies in about two thirds of its bytes
(issue #17; `engine.model.coding.attach_coded`, MOE_CODED_EXPERTS). The copy path moves the code over PCIe and a GPU kernel
(`engine.kernels.expert_decode`) decodes it into the cache slot.

A bf16 weight is sign, 8 exponent and 7 mantissa bits. The code keeps sign and mantissa as one raw byte
per weight and codes the exponent byte with a canonical Huffman code of at most MAX_BITS bits, built for
each expert row (about 2.7 bits a weight on trained or normally initialised experts,
`bench/expert_entropy.py`): a Qwen3-30B-A3B expert codes to 0.68 of its bf16 bytes.

Layout of one row's code, one contiguous uint8 blob (`CodeLayout` gives the offsets, all 16-aligned):
- raw: uint8 [blocks * LANES * steps], sign << 7 | mantissa, in weight order;
- starts: int32 [blocks * LANES], the first word of each lane's bit stream;
- table: int16 [2^MAX_BITS], symbol | code length << 8 of the code that prefixes each MAX_BITS-bit window;
- words: int32 [W + 1], every lane's bit stream one after another (MSB first, each starting on a word),
  then one zero word (a decoder reads one word past a code's own).
The weights are cut into blocks of LANES x steps; in a block, lane l codes weights l, l + LANES, ... so a
decoder program per block writes LANES contiguous weights a step. A row shorter than a block is padded.

`encode` builds a blob with torch on any device (the GPU does a Qwen3 expert in about a millisecond);
`decode_reference` is torch's decoder (CPU copies and the tests; the GPU's is
`engine.kernels.expert_decode`). `CodedStore` holds every expert's blob in (pinned) host memory beside the
`ExpertStore`; the cache's copies use it when the store has one (`ExpertStore.coded`).

Imports torch, numpy and `engine.experts.store` / `engine.experts.pinned` only.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.experts.pinned import page_locked_empty
from engine.experts.store import ExpertStore

MAX_BITS = 12  # the longest exponent code: the decode table has 2^MAX_BITS entries
LANES = 128
STEPS = 128  # weights a lane decodes per block (fewer: more programs, a shorter chain, more start words)
CODED_DTYPES = (torch.bfloat16,)


def _align(n: int, to: int = 16) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class CodeLayout:
    """Where each part of a row's blob lies, for rows of `numel` weights coded `steps` weights a lane."""

    numel: int
    steps: int = STEPS

    @property
    def per_block(self) -> int:
        return LANES * self.steps

    @property
    def blocks(self) -> int:
        return max(1, -(-self.numel // self.per_block))

    @property
    def raw_bytes(self) -> int:
        return self.blocks * self.per_block

    @property
    def starts_at(self) -> int:
        return _align(self.raw_bytes)

    @property
    def table_at(self) -> int:
        return _align(self.starts_at + 4 * self.blocks * LANES)

    @property
    def words_at(self) -> int:
        return _align(self.table_at + 2 * (1 << MAX_BITS))

    def nbytes(self, words: int) -> int:
        """A blob's bytes with `words` stream words (the trailing zero word included)."""
        return self.words_at + 4 * words

    def parts(self, blob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw uint8, starts int32, table int16, words int32) views of a blob (uint8, on any device)."""
        raw = blob[: self.raw_bytes]
        starts = blob[self.starts_at : self.starts_at + 4 * self.blocks * LANES].view(torch.int32)
        table = blob[self.table_at : self.table_at + 2 * (1 << MAX_BITS)].view(torch.int16)
        n = (blob.numel() - self.words_at) // 4
        words = blob[self.words_at : self.words_at + 4 * n].view(torch.int32)
        return raw, starts, table, words


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length per symbol (0 for unused ones) of a Huffman code limited to MAX_BITS bits (the counts are
    flattened, halving their spread, until the longest code fits)."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    c = counts[used].copy()
    while True:
        heap = [(int(f), i, [i]) for i, f in enumerate(c)]
        heapq.heapify(heap)
        depth = np.zeros(len(c), dtype=np.int64)
        n = len(c)
        while len(heap) > 1:
            fa, _, a = heapq.heappop(heap)
            fb, _, b = heapq.heappop(heap)
            depth[a + b] += 1
            heapq.heappush(heap, (fa + fb, n, a + b))
            n += 1
        if depth.max() <= MAX_BITS:
            lengths[used] = depth
            return lengths
        c = (c + 1) // 2


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (MSB first) of the symbols, in (length, symbol) order."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def _table(lengths: np.ndarray, codes: np.ndarray) -> np.ndarray:
    table = np.zeros(1 << MAX_BITS, dtype=np.int16)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (MAX_BITS - int(lengths[s]))
        table[lo : lo + (1 << (MAX_BITS - int(lengths[s])))] = s | (int(lengths[s]) << 8)
    return table


def encode(row: torch.Tensor, layout: CodeLayout) -> torch.Tensor:
    """The blob (uint8, on `row`'s device) of one bf16 row of `layout.numel` weights."""
    if row.dtype not in CODED_DTYPES:
        raise ValueError(f"coded experts need bfloat16 weights, not {row.dtype}")
    if row.numel() != layout.numel:
        raise ValueError(f"a row of {row.numel()} weights, the layout's rows have {layout.numel}")
    dev = row.device
    bits = torch.zeros(layout.raw_bytes, dtype=torch.int32, device=dev)
    bits[: layout.numel] = row.detach().contiguous().view(torch.int16).flatten().to(torch.int32) & 0xFFFF
    exp = (bits >> 7) & 0xFF
    raw = ((bits >> 8) & 0x80) | (bits & 0x7F)
    lengths = huffman_lengths(torch.bincount(exp, minlength=256).cpu().numpy())
    codes = canonical_codes(lengths)
    blocks, steps = layout.blocks, layout.steps
    lane_exp = exp.view(blocks, steps, LANES).transpose(1, 2).reshape(blocks * LANES, steps)
    ln = torch.from_numpy(lengths).to(dev)[lane_exp]  # int64 [lanes, steps]
    val = torch.from_numpy(codes).to(dev)[lane_exp]
    ends = ln.cumsum(1)
    pos = ends - ln  # each code's first bit in its lane's stream
    lane_words = (ends[:, -1] + 31) // 32
    starts = lane_words.cumsum(0) - lane_words
    total = int(lane_words.sum())
    word = starts[:, None] + (pos >> 5)
    off = pos & 31
    v = val << (44 - off - ln)  # the code in a 44-bit window from its word's first bit (off + ln <= 43)
    acc = torch.zeros(total + 2, dtype=torch.int64, device=dev)  # codes never overlap: adding is or-ing
    acc.scatter_add_(0, word.flatten(), (v >> 12).flatten())
    acc.scatter_add_(0, (word + 1).flatten(), ((v & 0xFFF) << 20).flatten())
    acc = acc[: total + 1]
    words = torch.where(acc >= 1 << 31, acc - (1 << 32), acc).to(torch.int32)
    blob = torch.zeros(layout.nbytes(total + 1), dtype=torch.uint8, device=dev)
    p_raw, p_starts, p_table, p_words = layout.parts(blob)
    p_raw.copy_(raw.to(torch.uint8))
    p_starts.copy_(starts.to(torch.int32))
    p_table.copy_(torch.from_numpy(_table(lengths, codes)))
    p_words.copy_(words)
    return blob


def decode_reference(blob: torch.Tensor, layout: CodeLayout, out: torch.Tensor) -> torch.Tensor:
    """Decode `blob` into `out` (bf16 [numel], same device) with torch: a step at a time over every lane."""
    raw, starts, table, words = layout.parts(blob)
    words = words.to(torch.int64) & 0xFFFFFFFF
    starts = starts.to(torch.int64)
    sym = (table.to(torch.int64) & 0xFF).to(torch.int32)
    ln = table.to(torch.int64) >> 8
    lanes = layout.blocks * LANES
    bitpos = torch.zeros(lanes, dtype=torch.int64, device=blob.device)
    exps = torch.empty((lanes, layout.steps), dtype=torch.int32, device=blob.device)
    for i in range(layout.steps):
        w, off = starts + (bitpos >> 5), bitpos & 31
        window = ((words[w] << off) & 0xFFFFFFFF) | (words[w + 1] >> (32 - off))  # 32 bits from bitpos
        idx = window >> (32 - MAX_BITS)
        exps[:, i] = sym[idx]
        bitpos += ln[idx]
    exp = exps.view(layout.blocks, LANES, layout.steps).transpose(1, 2).reshape(-1)[: layout.numel]
    r = raw[: layout.numel].to(torch.int32)
    bits = ((r & 0x80) << 8) | (exp << 7) | (r & 0x7F)
    out.view(torch.int16).copy_(bits.to(torch.int16))
    return out


# (buffer, layout) -> a decoder of whatever code `buffer` (a fixed device buffer) holds when it is called:
# out -> out. Binding once saves each copy the blob's views and checks (the coded copies' staging buffers).
Binder = Callable[[torch.Tensor, CodeLayout], Callable[[torch.Tensor], torch.Tensor]]


def bind_reference(buffer: torch.Tensor, layout: CodeLayout) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's decoder bound to `buffer`."""
    return lambda out: decode_reference(buffer, layout, out)


# (stages [K, stride] uint8, out [S, numel], layout) -> a decoder of jobs [(k, d), ...]: the code in stage row
# k into out row d, for every job (a batch of copies' codes in one call, one launch on a GPU).
ManyBinder = Callable[[torch.Tensor, torch.Tensor, CodeLayout], Callable[[list[tuple[int, int]]], None]]


def bind_many_reference(
    stages: torch.Tensor, out: torch.Tensor, layout: CodeLayout
) -> Callable[[list[tuple[int, int]]], None]:
    """torch's decoder, one job at a time."""

    def decode(jobs: list[tuple[int, int]]) -> None:
        for k, d in jobs:
            decode_reference(stages[k], layout, out[d])

    return decode


class CodedStore:
    """Every routed expert's code beside the `ExpertStore`: for MoE layer l, `buffers[l]` is a uint8
        [E, max bytes] tensor (pinned when a GPU is used) whose row e starts with expert e's blob of
        `nbytes[l][e]` bytes. The bf16 store stays: streamed steps and hybrid misses read it. `decode(blob, out)`
    decodes a blob already on `out`'s device and `bind(buffer)` binds a decoder to a fixed buffer (the Triton kernel on
    a GPU, passed in by `engine.model`)."""

    def __init__(
        self,
        layout: CodeLayout,
        buffers: list[torch.Tensor],
        nbytes: list[list[int]],
        bind: Binder = bind_reference,
        bind_many: ManyBinder = bind_many_reference,
    ) -> None:
        self.layout = layout
        self.buffers = buffers
        self.nbytes = nbytes
        self.max_nbytes = max(b.shape[1] for b in buffers)
        self._rows: dict[int, tuple[torch.Tensor, ...]] = {}
        self._bind = bind
        self._bind_many = bind_many

    def decode(self, blob: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._bind(blob, self.layout)(out)

    def bind(self, buffer: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A decoder of the code `buffer` (a device buffer at least one blob long) holds at each call."""
        return self._bind(buffer, self.layout)

    def bind_many(self, stages: torch.Tensor, out: torch.Tensor) -> Callable[[list[tuple[int, int]]], None]:
        """A decoder of jobs [(k, d)]: the code in row k of `stages` into row d of `out` (one call a batch)."""
        return self._bind_many(stages, out, self.layout)

    def blob(self, layer: int, expert: int) -> torch.Tensor:
        return self.buffers[layer][expert, : self.nbytes[layer][expert]]

    def row(self, layer: int, expert: int) -> torch.Tensor:
        """Expert `expert`'s whole row of `buffers[layer]`: its blob, then zero padding to the layer's widest
        blob. A decoder reads only the blob's parts, so the copies move rows (views made once per layer: no
        indexing per copy)."""
        rows = self._rows.get(layer)
        if rows is None:
            rows = self._rows[layer] = self.buffers[layer].unbind(0)
        return rows[expert]

    @property
    def coded_bytes(self) -> int:
        return sum(sum(n) for n in self.nbytes)

    def ratio(self, store: ExpertStore) -> float:
        """Coded bytes over the bf16 bytes of the same experts."""
        return self.coded_bytes / store.nbytes


def code_store(
    store: ExpertStore,
    device: torch.device,
    steps: int = STEPS,
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
    bind: Binder = bind_reference,
    bind_many: ManyBinder = bind_many_reference,
) -> CodedStore:
    """Code every expert of `store`, encoding on `device` (the GPU when there is one: rows are copied there
    `chunk` at a time and their blobs brought back); pinned when `store` is. `progress(done, layers)`
    after each layer."""
    if store.layout.dtype not in CODED_DTYPES:
        raise ValueError(
            f"coded experts need bfloat16 expert weights; this model's are {store.layout.dtype} "
            "(MOE_DTYPE=bfloat16, the default on CUDA)"
        )
    layout = CodeLayout(store.layout.numel, steps)
    buffers, nbytes = [], []
    for layer in range(store.num_layers):
        host = store.buffers[layer]
        if host is None:
            raise RuntimeError(f"expert store: layer {layer} was never filled")
        blobs = []
        for e0 in range(0, host.shape[0], chunk):
            rows = host[e0 : e0 + chunk].to(device, non_blocking=False)
            blobs += [encode(r, layout) for r in rows]
        width = max(b.numel() for b in blobs)
        buf = (
            page_locked_empty((len(blobs), width), torch.uint8)
            if store.pinned
            else torch.empty((len(blobs), width), dtype=torch.uint8)
        )
        for e, b in enumerate(blobs):
            buf[e, : b.numel()].copy_(b)
        buffers.append(buf)
        nbytes.append([b.numel() for b in blobs])
        if progress is not None:
            progress(layer + 1, store.num_layers)
    return CodedStore(layout, buffers, nbytes, bind, bind_many)
