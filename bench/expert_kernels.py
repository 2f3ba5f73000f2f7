"""Time every block configuration of the slot-expert kernels at one shape (what `_tuned` chooses among).

    python bench/expert_kernels.py --preset qwen3-30b-a3b --tokens 1

Random slot pool of the preset's expert shape (bf16), `--tokens` tokens with top-k experts each; prints
GPU microseconds per call (median of 5 timings of 10 queued calls) for the gate/up kernel and for
both strategies of the down projection, and the bandwidth each reaches on the weight bytes it reads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.kernels.autotune import CONFIGS, DOWN_CONFIGS, gpu_time_ms  # noqa: E402
from engine.kernels.grouped_experts import fused_silu_experts  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402


def timed(fn, reps: int = 10) -> float:
    """Median over 5 measurements of the GPU microseconds per call (see gpu_time_ms)."""
    return statistics.median(1e3 * gpu_time_ms(fn, reps) for _ in range(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = preset_config(args.preset)
    d = cfg.hidden_size
    inter = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size
    k = cfg.num_experts_per_tok
    slots = 64
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    gate_up = torch.randn((slots, 2 * inter, d), generator=gen, device=dev, dtype=torch.bfloat16)
    down = torch.randn((slots, d, inter), generator=gen, device=dev, dtype=torch.bfloat16)
    x = torch.randn((args.tokens, d), generator=gen, device=dev, dtype=torch.bfloat16)
    idx = torch.stack([torch.randperm(slots, device=dev)[:k] for _ in range(args.tokens)])
    w = torch.rand((args.tokens, k), device=dev)
    table = torch.arange(slots, device=dev, dtype=torch.int32)
    up_bytes = args.tokens * k * 2 * inter * d * 2
    down_bytes = args.tokens * k * d * inter * 2
    rows = []
    base_down = DOWN_CONFIGS[0]
    for c in CONFIGS:
        us = timed(
            lambda c=c: fused_silu_experts(x, idx, w, table, gate_up, down, up_cfg=c, down_cfg=base_down)
        )
        rows.append({"kernel": "gate_up+down(fixed)", "cfg": c, "us": us})
    base_up = min((r for r in rows), key=lambda r: r["us"])["cfg"]
    for c in DOWN_CONFIGS:
        us = timed(
            lambda c=c: fused_silu_experts(x, idx, w, table, gate_up, down, up_cfg=base_up, down_cfg=c)
        )
        rows.append({"kernel": "gate_up(best)+down", "cfg": c, "us": us})
    for r in rows:
        print(f"{r['kernel']:22} {str(r['cfg']):28} {r['us']:7.1f} us")
    print(f"weight bytes: gate/up {up_bytes / 1e6:.1f} MB, down {down_bytes / 1e6:.1f} MB")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"expert_kernels_{args.preset.replace('-', '_')}_t{args.tokens}.json").write_text(
            json.dumps({"rows": rows, "up_bytes": up_bytes, "down_bytes": down_bytes}, indent=1)
        )


if __name__ == "__main__":
    main()
