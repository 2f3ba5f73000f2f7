"""Coded expert copies for an offloaded model (`attach_coded`, MOE_CODED_EXPERTS): code every expert of its store once,
check one decode on the device against the store, and attach the codes, so the caches made from then on
copy codes (about two thirds of the bytes) and decode them into their slots (`engine.experts.coded`).

The decoder is the Triton kernel where it runs on the device (`engine.kernels.expert_decode`), torch's
reference elsewhere (CPU). Coding runs on the device: a Qwen3-30B-A3B-shaped model's 6,144 experts take
seconds on a GPU; on a CPU, torch's encoder does about ten experts of that size a second.

Imports torch, `engine.experts` and `engine.kernels` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from engine.experts.coded import (
    LANES,
    MAX_BITS,
    STEPS,
    CodedStore,
    CodeLayout,
    bind_many_reference,
    bind_reference,
    code_store,
)
from engine.experts.store import ExpertStore
from engine.kernels.expert_decode import decode_launch, decode_many_launch
from engine.kernels.triton_guard import kernels_run_on

log = logging.getLogger(__name__)


def bind_device(buffer: torch.Tensor, layout: CodeLayout) -> Callable[[torch.Tensor], torch.Tensor]:
    """A decoder of the code in `buffer`: the Triton kernel where it runs on `buffer`'s device (its views of
    the buffer's parts taken once), torch's decoder elsewhere."""
    if not kernels_run_on(buffer):
        return bind_reference(buffer, layout)
    raw, starts, table, words = layout.parts(buffer)
    numel, steps = layout.numel, layout.steps

    def decode(out: torch.Tensor) -> torch.Tensor:
        decode_launch(raw, starts, table, words, out.view(torch.int16), numel, steps, LANES, MAX_BITS)
        return out

    return decode


def bind_device_many(
    stages: torch.Tensor, out: torch.Tensor, layout: CodeLayout
) -> Callable[[list[tuple[int, int]]], None]:
    """A decoder of jobs [(k, d)] (stage row k into pool row d): GROUP codes a Triton launch where it runs
    on the device, torch's decoder elsewhere."""
    if not kernels_run_on(stages):
        return bind_many_reference(stages, out, layout)
    out16 = out.view(torch.int16)
    offsets = (layout.starts_at, layout.table_at, layout.words_at)
    numel, blocks, steps = layout.numel, layout.blocks, layout.steps

    def decode(jobs: list[tuple[int, int]]) -> None:
        decode_many_launch(stages, out16, jobs, numel, blocks, offsets, steps, LANES, MAX_BITS)

    return decode


def device_decoder(blob: torch.Tensor, layout: CodeLayout, out: torch.Tensor) -> torch.Tensor:
    """Decode `blob` into `out` once (`bind_device`)."""
    return bind_device(blob, layout)(out)


def attach_coded(
    store: ExpertStore,
    device: torch.device,
    steps: int = STEPS,
    progress: Callable[[int, int], None] | None = None,
) -> CodedStore:
    """Code `store` on `device`, check that expert (0, 0) decodes there to the same bits (this also compiles
    the kernel before any step needs it), and set `store.coded`; returns it."""
    t0 = time.perf_counter()
    coded = code_store(
        store, device, steps=steps, progress=progress, bind=bind_device, bind_many=bind_device_many
    )
    out = torch.empty(store.layout.numel, dtype=store.layout.dtype, device=device)
    coded.decode(coded.blob(0, 0).to(device), out)
    if not torch.equal(out.cpu().view(torch.int16), store.row(0, 0).view(torch.int16)):
        raise RuntimeError("coded experts: expert (0, 0) does not decode to its weights on this device")
    store.coded = coded
    log.info(
        "coded experts: %d experts coded to %.3f of their bytes (%.2f GB) in %.1f s",
        store.total_experts,
        coded.ratio(store),
        coded.coded_bytes / 1e9,
        time.perf_counter() - t0,
    )
    return coded
