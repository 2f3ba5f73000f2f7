"""What one pre-attention predictor costs inside a decode step, per layer, by width and by implementation
(issue #17: at most 5 µs per layer on the Qwen3-30B-A3B shape, within 1 point of recall of the 2048-wide
predictor; the recall side is `bench/predictor_width.py`).

    python bench/predictor_cost.py --out bench/results                   # one GPU, the Qwen3-30B-A3B shape
    python bench/predictor_cost.py --smoke --device cpu --out /tmp/pc    # CPU, toy shape, torch only (the test)

A bank of random-weight predictors, one per MoE layer (48 on the Qwen3 shape: their weights, 48 x 8.9 MB at
width 2048, do not fit in L2, as in a real step), each taking x [T, d] to the M ids the policy keeps
(`exact`: k, `overprovision`: k'). One CUDA graph runs every layer's predictor in turn; replayed `--reps`
times between CUDA events, its time over the layers is the cost per layer, median of `--runs` graphs. The
implementations:
- `torch`: the module's forward then torch.topk, what the engine's tap runs today (`PredictorBank.forward_layer`,
  `TopK.select`);
- `kernel`: `engine.kernels.fused_predictor.PredictorKernels.top_ids`: the whole predictor and its top-M in
  one Triton launch;
- `kernel+topk`: the same kernel writing the logits, then the policy's torch.topk (what a policy that needs
  the scores, `adaptive`, would run);
- `kernel@BK/W/BN` (also `kernel+topk@...`): the kernel with another K block, number of warps and hidden
  units per program (default 512/4/16, the fastest of 128/2, 128/4, 256/4, 256/8 and 512/4 on an H200:
  `predictor_cost_variants.json`; 32 hidden units a program measured slower, `predictor_anatomy.json`).
(Stop 28's two- and three-launch kernels, one program per row and block, measured 61-167 µs per layer on
an H200, 3-4x torch's path; `predictor_cost_stop28.json` keeps that run.)
Each is also checked against `torch`: the share of rows whose M ids are the same set (random weights: a
near tie can reorder the last id). Also the bytes of one layer's weights and the time HBM needs for them.

Writes `<out>/predictor_cost.json` (rewritten after every configuration) and `.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import device_bandwidth, device_name  # noqa: E402
from engine.prefetch.nets import build_predictor  # noqa: E402

SHAPES = {  # d_model, routed experts, k, k'
    "qwen3-30b-a3b": (2048, 128, 8, 12),
    "deepseek-v2-lite": (2048, 64, 6, 9),
    "phi-mini-moe": (4096, 16, 2, 3),
    "smoke": (64, 16, 2, 3),
}
MOE_LAYERS = {"qwen3-30b-a3b": 48, "deepseek-v2-lite": 26, "phi-mini-moe": 32, "smoke": 4}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bank(arch: int, d: int, e: int, hidden: int, layers: int, dtype, device) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    nets = []
    for _ in range(layers):
        net = build_predictor(arch, d, e, hidden).eval()
        if arch == 1:  # running statistics a trained BatchNorm would have
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
        nets.append(net.to(device=device, dtype=dtype))
    return nets


def split_impl(impl: str) -> tuple[str, str, dict]:
    """`kernel@512/4/32` -> ("kernel", "@512/4/32", {"block_k": 512, "num_warps": 4, "block_n": 32}) (K
    block, warps, hidden units per program; the last two optional); no tail: (impl, "", {})."""
    base, at, spec = impl.partition("@")
    if not at:
        return base, "", {}
    bk, w, bn = (spec.split("/") + ["", ""])[:3]
    kw = {"block_k": int(bk), "num_warps": int(w or 4)}
    if bn:
        kw["block_n"] = int(bn)
    return base, at + spec, kw


def kernels_of(nets, impls: list[str]) -> dict:
    """kernel variant (its `@BK/W` tail) -> each layer's `PredictorKernels` (weights folded once per bank
    and variant)."""
    from engine.kernels.fused_predictor import PredictorKernels

    variants = {split_impl(i)[1]: split_impl(i)[2] for i in impls if i.startswith("kernel")}
    return {tail: [PredictorKernels(n, **kw) for n in nets] for tail, kw in variants.items()}


def runners(nets, pks: dict, m: int, impls: list[str]) -> dict:
    """impl -> [per layer: x -> ids [T, M]]."""
    out = {}
    for impl in impls:
        base, tail, _ = split_impl(impl)
        if base == "torch":
            out[impl] = [lambda x, n=n: torch.topk(n(x), m, dim=-1).indices for n in nets]
        elif base == "kernel":
            out[impl] = [lambda x, p=p: p.top_ids(x, m) for p in pks[tail]]
        elif base == "kernel+topk":
            out[impl] = [lambda x, p=p: torch.topk(p.scores(x), m, dim=-1).indices for p in pks[tail]]
        else:
            raise SystemExit(f"--impls: unknown implementation {impl!r}")
    return out


def time_graph(fns, x: torch.Tensor, reps: int, runs: int, cuda: bool) -> float:
    """µs per layer: every layer's predictor in turn, in one CUDA graph (CPU: plain calls)."""
    if not cuda:
        t0 = time.perf_counter()
        for _ in range(reps):
            for f in fns:
                f(x)
        return 1e6 * (time.perf_counter() - t0) / (reps * len(fns))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile and warm outside the capture
            for f in fns:
                f(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for f in fns:
            f(x)
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(1e3 * a.elapsed_time(b) / (reps * len(fns)))
    return statistics.median(times)


def agreement(fns, ref, x: torch.Tensor) -> float:
    """Share of (layer, row) whose id sets equal the torch path's."""
    same = total = 0
    for f, r in zip(fns, ref, strict=True):
        a, b = f(x).sort(dim=-1).values, r(x).sort(dim=-1).values
        same += int((a == b).all(dim=-1).sum())
        total += a.shape[0]
    return same / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen3-30b-a3b", choices=[s for s in SHAPES if s != "smoke"])
    ap.add_argument("--widths", default="2048,1024,512,256")
    ap.add_argument("--archs", default="2,1")
    ap.add_argument("--rows", default="1,8", help="tokens per step (batch)")
    ap.add_argument("--impls", default="torch,kernel,kernel+topk")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--smoke", action="store_true", help="a toy shape, torch only, for the CPU test")
    args = ap.parse_args()
    shape = "smoke" if args.smoke else args.shape
    d, e, k, kp = SHAPES[shape]
    layers = MOE_LAYERS[shape]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    impls = ["torch"] if args.smoke else args.impls.split(",")
    widths = [int(w) for w in args.widths.split(",")] if not args.smoke else [32, 16]
    hbm = 1e9 * device_bandwidth(1 << 28)["gb_per_s"] if cuda else None  # read + write bytes/s
    args.out.mkdir(parents=True, exist_ok=True)
    res = {
        "shape": shape, "d_model": d, "experts": e, "top_k": k, "k_prime": kp, "moe_layers": layers,
        "device": device_name(device), "dtype": str(dtype),
        "torch": torch.__version__, "hbm_gb_per_s": hbm and hbm / 1e9, "command": " ".join(sys.argv),
        "reps": args.reps, "runs": args.runs, "rows": [],
    }  # fmt: skip
    path = args.out / "predictor_cost.json"
    for arch in [int(a) for a in args.archs.split(",")]:
        for hidden in widths:
            nets = bank(arch, d, e, hidden, layers, dtype, device)
            pks = kernels_of(nets, impls)
            layer_bytes = sum(p.numel() * p.element_size() for p in nets[0].parameters())
            for t in [int(r) for r in args.rows.split(",")]:
                x = torch.randn(t, d, device=device, dtype=dtype)
                for policy, m in (("exact", k), ("overprovision", kp)):
                    fns = runners(nets, pks, m, impls)
                    ref = runners(nets, pks, m, ["torch"])["torch"]
                    for impl, fs in fns.items():
                        us = time_graph(fs, x, args.reps, args.runs, cuda)
                        row = {
                            "arch": arch, "hidden": hidden, "rows": t, "policy": policy, "ids": m, "impl": impl,
                            "us_per_layer": us, "us_per_token": us * layers, "layer_bytes": layer_bytes,
                            "hbm_floor_us": hbm and 1e6 * layer_bytes / (hbm / 2),
                            "same_ids_as_torch": agreement(fs, ref, x),
                        }  # fmt: skip
                        res["rows"].append(row)
                        path.write_text(json.dumps(res, indent=1))
                        log(
                            f"arch {arch} width {hidden:5d} T={t} {policy:13s} {impl:16s}: {us:7.2f} µs/layer "
                            f"({us * layers / 1e3:.3f} ms/token), same ids {100 * row['same_ids_as_torch']:.1f}%"
                        )
            del nets, pks
    plot(res, args.out / "predictor_cost.png")
    log(f"wrote {path}")


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in res["rows"] if r["rows"] == 1 and r["policy"] == "exact"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for arch in sorted({r["arch"] for r in rows}):
        for impl in sorted({r["impl"] for r in rows}):
            pts = sorted(
                (r["hidden"], r["us_per_layer"]) for r in rows if r["arch"] == arch and r["impl"] == impl
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"arch {arch}, {impl}")
    ax.axhline(5.0, color="grey", ls="--", lw=1, label="5 µs target")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("predictor hidden size")
    ax.set_ylabel("µs per layer (batch 1, exact)")
    ax.set_title(f"Predictor cost per layer in a CUDA graph, {res['shape']} shape, {res['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
