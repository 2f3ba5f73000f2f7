"""Coded expert copies, measured with the engine's own code (issue #17; docs/performance.md "Coded expert copies"):
how small the code is, how fast the device decodes one expert at each block length, and what a cache fill
costs per expert with plain and coded copies through the engine's copy path.

    python bench/coded_experts.py --out bench/results            # on a GPU -> coded_experts.json
    python bench/coded_experts.py --device cpu --weights 65536   # the CPU check (torch's reference decoder)

The code is `engine.experts.coded` (sign and mantissa raw, the exponent byte Huffman-coded, lanes of `steps`
weights); the decoder is `engine.model.coding.device_decoder` (the Triton kernel on a GPU, torch's reference
elsewhere). For each `--steps` the bench encodes `--experts` random bf16 experts on the device, checks that
each decodes to the same bits, and times one expert's decode (CUDA events, median of `--reps`) against a
device-to-device copy of its bf16 bytes and a host-to-device copy of its bf16 bytes and of its code.

On a GPU it then fills an `ExpertCache` of `--slots` slots from a pinned one-layer `ExpertStore` of
`--store-experts` experts, `--slots` experts per acquire so every acquire copies them all, first with plain
copies and then with the store's codes attached (`attach_coded`): milliseconds per expert delivered
(median over fills), the host's share of it (the acquire returning, its copies issued), and whether every
slot holds its expert's exact bits.

Imports numpy, torch and the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.experts.coded import CodeLayout, encode  # noqa: E402
from engine.kernels.expert_decode import GROUP  # noqa: E402
from engine.model.coding import attach_coded, bind_device, bind_device_many, device_decoder  # noqa: E402

QWEN3_EXPERT = {"gate_up_proj": (2 * 768, 2048), "down_proj": (2048, 768)}  # 4,718,592 weights


def _time_ms(fn, reps: int) -> float:
    """Median milliseconds of `fn` on the current stream (CUDA events), after one warm-up call."""
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


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.cpu().view(torch.int16), b.cpu().view(torch.int16))


def codec_record(weights: torch.Tensor, steps: int, dev: torch.device, reps: int) -> dict:
    """Code every row of `weights` (bf16 [experts, numel], on `dev`) with `steps` weights a lane."""
    layout = CodeLayout(weights.shape[1], steps)
    t0 = time.perf_counter()
    blobs = [encode(row, layout) for row in weights]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    rec = {
        "steps": steps,
        "encode_ms_per_expert": round(1e3 * (time.perf_counter() - t0) / len(blobs), 2),
        "ratio": round(sum(b.numel() for b in blobs) / (weights.numel() * 2), 4),
    }
    out = torch.empty(layout.numel, dtype=torch.bfloat16, device=dev)
    rec["exact"] = all(
        _same_bits(device_decoder(b, layout, out), row) for b, row in zip(blobs, weights, strict=True)
    )
    if dev.type != "cuda":
        return rec
    ms = _time_ms(lambda: device_decoder(blobs[0], layout, out), reps)
    bound = bind_device(blobs[0], layout)  # as the copy path calls it: views taken once
    for _ in range(3):
        bound(out)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        bound(out)
    launch_us = 1e6 * (time.perf_counter() - t0) / reps  # host time of one launch (the device keeps up)
    stride = -(-max(b.numel() for b in blobs) // 16) * 16  # GROUP codes in one launch, as a cache's flush
    stages = torch.zeros((GROUP, stride), dtype=torch.uint8, device=dev)
    for k in range(GROUP):
        stages[k, : blobs[k % len(blobs)].numel()] = blobs[k % len(blobs)]
    pool = torch.empty((GROUP, layout.numel), dtype=torch.bfloat16, device=dev)
    many = bind_device_many(stages, pool, layout)
    jobs = [(k, k) for k in range(GROUP)]
    many_ms = _time_ms(lambda: many(jobs), reps)
    host_blob = blobs[0].cpu().pin_memory()
    dev_blob = torch.empty_like(blobs[0])
    rec.update(
        decode_ms=round(ms, 4),
        decode_output_gbs=round(2 * layout.numel / ms / 1e6, 1),
        launch_host_us=round(launch_us, 1),
        group_decode_ms=round(many_ms, 4),  # GROUP experts in one batched launch
        group_decode_output_gbs=round(2 * GROUP * layout.numel / many_ms / 1e6, 1),
        h2d_code_ms=round(_time_ms(lambda: dev_blob.copy_(host_blob, non_blocking=True), reps), 4),
    )
    return rec


def fill_record(store, slots: int, dev: torch.device, reps: int) -> dict:
    """Fill a fresh cache `slots` experts at a time from every expert of `store`'s layer 0, `reps` rounds:
    median ms per expert over the fills, and whether the last round's slots hold exact bits."""
    from engine.experts.cache import ExpertCache

    cache = ExpertCache(store, slots, dev)
    experts = store.layout.num_experts
    per_fill, host, exact = [], [], True
    for rnd in range(reps + 1):
        for e0 in range(0, experts - slots + 1, slots):
            ids = list(range(e0, e0 + slots))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            acq = cache.acquire(0, ids)
            issued = time.perf_counter()
            torch.cuda.synchronize()
            if rnd:  # round 0 warms up (the kernel's first launch, the staging buffers)
                per_fill.append(1e3 * (time.perf_counter() - t0) / slots)
                host.append(1e3 * (issued - t0) / slots)
            if rnd == reps:
                got = cache.pool[acq.slots]
                exact = exact and all(_same_bits(got[i], store.row(0, e)) for i, e in enumerate(ids))
            cache.release(acq)
    ms = float(np.median(per_fill))
    return {
        "coded": cache.coded is not None,
        "fill_ms_per_expert": round(ms, 4),
        "host_ms_per_expert": round(float(np.median(host)), 4),  # the acquire's own time, copies issued
        "fill_gbs_bf16": round(store.layout.nbytes / ms / 1e6, 1),  # bf16 weights delivered per second
        "exact": exact,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--weights", type=int, default=0, help="weights per expert (default: a Qwen3-30B-A3B expert)"
    )
    ap.add_argument("--experts", type=int, default=4, help="experts coded and checked per block length")
    ap.add_argument("--steps", default="32,64,128,256", help="block lengths (weights a lane decodes)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--slots", type=int, default=8, help="cache slots in the fill measurement (GPU)")
    ap.add_argument("--store-experts", type=int, default=64, help="experts in the fill measurement's store")
    ap.add_argument("--out", type=Path, default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    numel = args.weights or sum(a * b for a, b in QWEN3_EXPERT.values())
    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn((args.experts, numel), generator=g, device=dev) * args.std).to(torch.bfloat16)
    rec: dict = {
        "kind": "coded_experts",
        "command": "python bench/coded_experts.py" + (" " + " ".join(argv) if argv else ""),
        "weights_per_expert": numel,
        "std": args.std,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "codec": [],
    }

    def save() -> None:
        print(json.dumps(rec), flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "coded_experts.json").write_text(json.dumps(rec, indent=1) + "\n")

    if dev.type == "cuda":
        src, dst = w[0].clone(), torch.empty_like(w[0])
        host = w[0].cpu().pin_memory()
        rec["device_copy_ms"] = round(_time_ms(lambda: dst.copy_(src), args.reps), 4)
        rec["h2d_bf16_ms"] = round(_time_ms(lambda: dst.copy_(host, non_blocking=True), args.reps), 4)
    for steps in (int(s) for s in args.steps.split(",")):
        rec["codec"].append(codec_record(w, steps, dev, args.reps))
        save()
    if dev.type == "cuda" and args.store_experts >= args.slots:
        from engine.experts.store import ExpertLayout, ExpertStore

        layout = ExpertLayout.from_shapes(
            QWEN3_EXPERT if not args.weights else {"w": (numel,)}, torch.bfloat16, args.store_experts
        )
        store = ExpertStore(layout, 1, pin=True)
        store.allocate(0).normal_(0.0, args.std)
        rec["fill"] = {"slots": args.slots, "store_experts": args.store_experts, "runs": []}
        rec["fill"]["runs"].append(fill_record(store, args.slots, dev, max(2, args.reps // 4)))
        save()
        for steps in (int(s) for s in args.steps.split(",")):
            attach_coded(store, dev, steps=steps)
            run = fill_record(store, args.slots, dev, max(2, args.reps // 4))
            run["steps"] = steps
            rec["fill"]["runs"].append(run)
            save()
    save()


if __name__ == "__main__":
    main()
