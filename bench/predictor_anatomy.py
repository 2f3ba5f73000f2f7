"""Where a batch-1 launch of the predictor kernel spends its time (issue #17: at most 5 µs per layer on the
Qwen3-30B-A3B shape; `bench/predictor_cost.py` measured 9.4 µs for `engine.kernels.fused_predictor`).

    python bench/predictor_anatomy.py --out bench/results      # one GPU, the Qwen3-30B-A3B shape

The engine's kernel does, in one launch, (1) the first linear and its activation, (2) the second linear,
whose partial logits each program adds into a shared scratch with atomics, (3) an atomic counter, after
which the last program reads the scratch back, zeroes it and ranks the experts. This script times a staged
copy of that kernel (`_staged`, the same loads, dot products and atomics, cut after each step; a measuring
instrument, not the engine's kernel) in the same setting as predictor_cost.py: a bank of one random-weight
predictor per MoE layer, every layer's launch in turn in one CUDA graph, µs per layer, median of `--runs`.
The stages, each adding one step to the one before:
  0 launch: every program stores one number (what a graph's kernel node costs with this grid)
  1 first linear: x and W1 read, the activation (its sum stored, so nothing is dead code)
  2 second linear, plain stores: W2 read, each program stores its partial logits in its own slot
  3 second linear, atomics: the partials added into one scratch instead (what the kernel does)
  4 counter: the atomic counter, and the last program reads the scratch back and zeroes it
  5 ranking: and ranks the M best ids (the whole kernel)
Stages 3-5 run with relaxed and with acq_rel atomics on the partials. The engine's kernel itself
(`PredictorKernels.top_ids`) is timed in the same run for reference. (The committed run,
`bench/results/predictor_anatomy.json`, also timed a one-row variant of the engine's kernel without `tl.dot`,
since dropped: 9.5-12.6 µs, its rows named "engine: row kernel".)

Writes `<out>/predictor_anatomy.json` (rewritten after every row).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import device_name  # noqa: E402
from bench.predictor_cost import MOE_LAYERS, SHAPES, bank, time_graph  # noqa: E402

STAGES = [
    "launch",
    "first linear",
    "second linear, plain stores",
    "second linear, atomics",
    "counter",
    "ranking",
]

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the script needs a GPU and Triton
    triton = None

if triton is not None:

    @triton.jit
    def _staged(
        x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, acc_ptr, count_ptr, ids_ptr, sink_ptr, D, H, E, stride_w1, stride_w2,
        STAGE: tl.constexpr, RELAXED: tl.constexpr, M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        dt = w1_ptr.dtype.element_ty
        if STAGE == 0:
            tl.store(sink_ptr + pid, 0.0)
        else:
            rows = tl.arange(0, 16)
            row_ok = rows < 1
            offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < H
            offs_e = tl.arange(0, BLOCK_E)
            e_ok = offs_e < E
            z = tl.zeros((16, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < D
                x = tl.load(
                    x_ptr + rows[:, None] * D + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                w = tl.load(
                    w1_ptr + offs_n[None, :].to(tl.int64) * stride_w1 + offs_k[:, None],
                    mask=n_ok[None, :] & k_ok[:, None],
                    other=0.0,
                )
                z = tl.dot(x.to(dt), w, z)
            z += tl.load(b1_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            z = z.to(dt).to(tl.float32)
            h = tl.where(n_ok[None, :], z * tl.sigmoid(z), 0.0).to(dt)
            if STAGE == 1:
                tl.store(sink_ptr + pid, tl.sum(tl.sum(h.to(tl.float32), axis=1), axis=0))
            else:
                w2 = tl.load(
                    w2_ptr + offs_e[None, :].to(tl.int64) * stride_w2 + offs_n[:, None],
                    mask=e_ok[None, :] & n_ok[:, None],
                    other=0.0,
                )
                part = tl.dot(h, w2)
                ok = row_ok[:, None] & e_ok[None, :]
                if STAGE == 2:
                    tl.store(sink_ptr + pid * BLOCK_E + rows[:, None] * 0 + offs_e[None, :], part, mask=ok)
                else:
                    cell = rows[:, None] * BLOCK_E + offs_e[None, :]
                    if RELAXED:
                        tl.atomic_add(acc_ptr + cell, part, mask=ok, sem="relaxed")
                    else:
                        tl.atomic_add(acc_ptr + cell, part, mask=ok)
                    if STAGE >= 4:
                        tl.debug_barrier()
                        done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
                        if done == tl.num_programs(0) - 1:
                            s = tl.atomic_add(
                                acc_ptr + cell, tl.zeros((16, BLOCK_E), tl.float32), mask=ok, sem="relaxed"
                            )
                            tl.store(acc_ptr + cell, tl.zeros((16, BLOCK_E), tl.float32), mask=ok)
                            s = s + tl.load(b2_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
                            if STAGE == 5:
                                s = tl.where(ok, s, float("-inf"))
                                for i in tl.static_range(M):
                                    best = tl.max(s, axis=1)
                                    pick = tl.min(
                                        tl.where(s == best[:, None], offs_e[None, :], BLOCK_E), axis=1
                                    )
                                    tl.store(ids_ptr + rows * M + i, pick.to(tl.int64), mask=row_ok)
                                    s = tl.where(offs_e[None, :] == pick[:, None], float("-inf"), s)
                            else:
                                tl.store(sink_ptr + offs_e, tl.sum(s, axis=0), mask=e_ok)
                            tl.atomic_xchg(count_ptr, 0)


class Staged:
    """One layer's predictor (Arch 2) run by `_staged` up to `stage`, with its own scratch and counter."""

    def __init__(self, net, stage: int, relaxed: bool, m: int, block_n: int, block_k: int, warps: int):
        self.w1, self.b1 = net[0].weight.detach(), net[0].bias.detach()
        self.w2, self.b2 = net[2].weight.detach(), net[2].bias.detach()
        self.h, self.d = self.w1.shape
        self.e = self.w2.shape[0]
        self.block_e = max(16, triton.next_power_of_2(self.e))
        self.stage, self.relaxed, self.m = stage, relaxed, m
        self.block_n, self.block_k, self.warps = block_n, block_k, warps
        self.grid = (triton.cdiv(self.h, block_n),)
        dev = self.w1.device
        self.acc = torch.zeros((16, self.block_e), dtype=torch.float32, device=dev)
        self.count = torch.zeros(1, dtype=torch.int32, device=dev)
        self.sink = torch.zeros(self.grid[0] * self.block_e, dtype=torch.float32, device=dev)
        self.ids = torch.zeros((1, max(m, 1)), dtype=torch.int64, device=dev)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _staged[self.grid](
            x, self.w1, self.b1, self.w2, self.b2, self.acc, self.count, self.ids, self.sink,
            self.d, self.h, self.e, self.w1.stride(0), self.w2.stride(0),
            STAGE=self.stage, RELAXED=self.relaxed, M=self.m,
            BLOCK_N=self.block_n, BLOCK_K=self.block_k, BLOCK_E=self.block_e, num_warps=self.warps,
        )  # fmt: skip
        return self.ids


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen3-30b-a3b", choices=[s for s in SHAPES if s != "smoke"])
    ap.add_argument("--widths", default="2048,256")
    ap.add_argument("--blocks", default="16/512/4,32/512/4,16/1024/8", help="hidden units/K block/warps")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    if triton is None or not torch.cuda.is_available():
        raise SystemExit("predictor_anatomy.py needs a CUDA GPU and Triton")
    from engine.kernels.fused_predictor import PredictorKernels

    d, e, k, _ = SHAPES[args.shape]
    layers = MOE_LAYERS[args.shape]
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "predictor_anatomy.json"
    res = {
        "shape": args.shape, "d_model": d, "experts": e, "ids": k, "moe_layers": layers, "rows": 1,
        "device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
        "command": " ".join(sys.argv), "reps": args.reps, "runs": args.runs, "stages": STAGES, "results": [],
    }  # fmt: skip
    x = torch.randn(1, d, device=device, dtype=torch.bfloat16)
    for hidden in [int(w) for w in args.widths.split(",")]:
        nets = bank(2, d, e, hidden, layers, torch.bfloat16, device)
        for spec in args.blocks.split(","):
            bn, bk, w = (int(v) for v in spec.split("/"))
            runs = [(s, True) for s in range(6)] + [(s, False) for s in (3, 4, 5)]
            for stage, relaxed in runs:
                fns = [Staged(n, stage, relaxed, k, bn, bk, w) for n in nets]
                us = time_graph(fns, x, args.reps, args.runs, True)
                row = {"hidden": hidden, "block_n": bn, "block_k": bk, "warps": w, "stage": stage,
                       "what": STAGES[stage], "atomics": "relaxed" if relaxed else "acq_rel", "us_per_layer": us}  # fmt: skip
                res["results"].append(row)
                path.write_text(json.dumps(res, indent=1))
                log(
                    f"width {hidden:5d} {spec:10s} stage {stage} {STAGES[stage]:28s} {row['atomics']:8s}: {us:6.2f} µs/layer"
                )
            pks = [PredictorKernels(n, block_n=bn, block_k=bk, num_warps=w) for n in nets]
            us = time_graph([lambda x, p=p: p.top_ids(x, k) for p in pks], x, args.reps, args.runs, True)
            res["results"].append({"hidden": hidden, "block_n": bn, "block_k": bk, "warps": w, "stage": None,
                                   "what": "engine: PredictorKernels.top_ids", "us_per_layer": us})  # fmt: skip
            path.write_text(json.dumps(res, indent=1))
            log(f"width {hidden:5d} {spec:10s} the engine's kernel{'':23s}: {us:6.2f} µs/layer")
        del nets
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
