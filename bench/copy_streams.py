"""How fast back-to-back expert copies run from page-locked host memory, by source and copy streams (issue #17).

The decode of a half-cached model is paced by its expert copies, so what a run of them really moves per
second matters more than one large copy's bandwidth. For an expert's size (a Qwen3-30B-A3B bf16 expert and
its code by default) this times `--copies` host-to-device copies in a row, each from another row of the
source into another device slot, from
- `torch_pinned`: torch's pinned allocator (cudaHostAlloc);
- `registered`: rows of one large buffer locked with cudaHostRegister, as the expert store does
  (`engine.experts.pinned.page_locked_empty`);
issued on one copy stream, or alternating over two (whether a second stream hides each copy's fixed cost).
Median of `--reps` of GB/s (bytes / the first copy's start to the last one's end, CUDA events).

    python bench/copy_streams.py --out bench/results        # -> copy_streams.json

Imports torch, `bench.common` and `engine.experts.pinned` only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name  # noqa: E402
from engine.experts.pinned import page_locked_empty  # noqa: E402

QWEN3_EXPERT = 3 * 2048 * 768 * 2  # bytes of one bf16 Qwen3-30B-A3B expert
QWEN3_CODE = 6_482_000  # its code's bytes, about (bench/results/coded_experts.json: ratio 0.6866)


def run_copies(src: torch.Tensor, dst: torch.Tensor, streams: list, copies: int) -> float:
    """GB/s of `copies` copies src[i % rows] -> dst[i % slots], alternating over `streams`."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cur = torch.cuda.current_stream()
    start.record(cur)
    for s in streams:
        s.wait_stream(cur)
    for i in range(copies):
        s = streams[i % len(streams)]
        with torch.cuda.stream(s):
            dst[i % dst.shape[0]].copy_(src[i % src.shape[0]], non_blocking=True)
    for s in streams:
        cur.wait_stream(s)
    end.record(cur)
    end.synchronize()
    return copies * src.shape[1] / (start.elapsed_time(end) / 1e3) / 1e9


def measure(nbytes: int, copies: int, reps: int, rows: int = 64, slots: int = 16) -> dict:
    sources = {
        "torch_pinned": torch.empty((rows, nbytes), dtype=torch.uint8, pin_memory=True),
        "registered": page_locked_empty((rows, nbytes), torch.uint8),
    }
    dst = torch.empty((slots, nbytes), dtype=torch.uint8, device="cuda")
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    out = {}
    for name, src in sources.items():
        src.fill_(1)
        for n in (1, 2):
            run_copies(src, dst, streams[:n], 8)  # warm-up
            gbs = [run_copies(src, dst, streams[:n], copies) for _ in range(reps)]
            out[f"{name}/{n}_stream{'s' if n > 1 else ''}"] = {
                "gb_per_s_median": round(statistics.median(gbs), 2),
                "gb_per_s_min": round(min(gbs), 2),
                "gb_per_s_max": round(max(gbs), 2),
                "ms_per_copy": round(nbytes / statistics.median(gbs) / 1e6, 4),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=f"{QWEN3_EXPERT},{QWEN3_CODE}", help="bytes per copy, comma-separated")
    ap.add_argument("--copies", type=int, default=96)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("copy_streams: needs a CUDA GPU")
    record = {
        "kind": "copy_streams",
        "device": device_name(torch.device("cuda")),
        "command": "python " + " ".join(sys.argv),
        "copies": args.copies,
        "reps": args.reps,
        "sizes": {},
    }
    for size in (int(s) for s in args.sizes.split(",")):
        record["sizes"][str(size)] = res = measure(size, args.copies, args.reps)
        print(size, json.dumps(res), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "copy_streams.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
