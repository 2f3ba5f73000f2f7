"""Recall against predictor width (issue #17: "predictors inside a step cost <= 5 us per layer on the Qwen3
shape, with recall@k within 1 point of today's 2048-wide predictor; measure the trade-off").

    python bench/predictor_width.py --out bench/results                      # the built-in model, CPU, minutes
    python bench/predictor_width.py --traces DIR --name qwen3_twin --device cuda --widths 2048,512,128 --out ...

For each hidden width it trains a predictor bank on the same trace set and split (`predictors.train`, the
same architecture, loss and epochs) and reports held-out recall@k, top-1 and recall at k' (mean over layers
and per layer), the points each width loses against the widest, and what one layer's predictor weighs at
the Qwen3-30B-A3B shape (input 2048, 128 experts) in bf16: the bytes a decode step reads per layer, which
at the H200's HBM bandwidth bound its time from below (the launch cost is not modelled: measure it on the
GPU; not measured yet). Without `--traces` it collects the built-in model's traces first, as
`bench/lookahead_recall.py` does (and reuses them from `--work`). Writes `<out>/predictor_width_<name>.
{json,md,png}`. Imports matplotlib, `predictors` and `bench.lookahead_recall` (trace arguments, header).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lookahead_recall import add_trace_args, load_traces, run_header  # noqa: E402
from predictors.metrics import all_metrics, default_k_prime  # noqa: E402
from predictors.traces import TraceSet  # noqa: E402
from predictors.train import predict_scores, train_bank  # noqa: E402

QWEN3 = {"d_model": 2048, "experts": 128, "hbm_gb_s": 4800.0}  # the shape of the target, H200 HBM (nominal)
KEYS = ("recall_at_k", "top1_accuracy", "overprov_recall")


def layer_params(arch: int, d_model: int, hidden: int, experts: int) -> int:
    """Weights of one layer's predictor (`engine.prefetch.nets.build_predictor`): d -> h -> E with biases;
    arch 1's batch norm adds its scale and shift."""
    return d_model * hidden + hidden + hidden * experts + experts + (2 * hidden if arch == 1 else 0)


def width_row(ts: TraceSet, hidden: int, args, k_prime: int) -> dict:
    t0 = time.monotonic()
    bank, _ = train_bank(
        ts, args.arch, args.loss, hidden=hidden, epochs=args.epochs, device=args.device, seed=args.seed,
        progress=False,
    )  # fmt: skip
    _, held = ts.split(0.1, args.seed)
    layers = []
    for i in range(ts.num_layers):
        data = ts.layer(i, held)
        layers.append(all_metrics(predict_scores(bank.layers[i], data.x, args.device), data.topk, k_prime))
    params = layer_params(args.arch, QWEN3["d_model"], hidden, QWEN3["experts"])
    return {
        "hidden": hidden,
        "seconds": round(time.monotonic() - t0, 1),
        "heldout_samples": int(held.sum()),
        "mean": {k: sum(x[k] for x in layers) / len(layers) for k in KEYS},
        "layers": layers,
        "params_per_layer_here": layer_params(args.arch, ts.d_model, hidden, ts.num_experts),
        "qwen3_params_per_layer": params,
        "qwen3_bf16_mb_per_layer": round(2 * params / 1e6, 3),
        "qwen3_hbm_floor_us_per_layer": round(2 * params / (QWEN3["hbm_gb_s"] * 1e3), 3),
    }


def add_losses(doc: dict) -> None:
    """Each width's points lost against the widest, mean over layers."""
    widest = max(doc["widths"], key=lambda r: r["hidden"])
    for r in doc["widths"]:
        r["points_below_widest"] = {k: round(100 * (widest["mean"][k] - r["mean"][k]), 2) for k in KEYS}


def write_md(doc: dict, path: Path) -> None:
    widest = max(r["hidden"] for r in doc["widths"])
    rows = [
        f"| {r['hidden']} | {100 * r['mean']['recall_at_k']:.2f}% | {r['points_below_widest']['recall_at_k']:+.2f} | "
        f"{100 * r['mean']['top1_accuracy']:.2f}% | {100 * r['mean']['overprov_recall']:.2f}% | "
        f"{100 * min(x['recall_at_k'] for x in r['layers']):.2f}% | {r['qwen3_bf16_mb_per_layer']:.2f} | "
        f"{r['qwen3_hbm_floor_us_per_layer']:.2f} | {r['seconds']:.0f} |"
        for r in sorted(doc["widths"], key=lambda r: -r["hidden"])
    ]
    fit = [r["hidden"] for r in doc["widths"] if r["points_below_widest"]["recall_at_k"] <= 1.0]
    lines = [
        f"# Predictor recall against width: {doc['name']}",
        "",
        f"Routing: {doc['routing']}. Traces: {doc['traces']['samples']} tokens of {doc['traces']['prompts']} "
        f"prompts; {doc['num_layers']} MoE layers, {doc['num_experts']} experts, top-{doc['top_k']}, k' "
        f"{doc['k_prime']}; input width {doc['d_model']}. Arch {doc['arch']} + {doc['loss']}, "
        f"{doc['epochs']} epochs at most, the same held-out prompts (10%, seed {doc['seed']}) for every width.",
        "",
        "| hidden | recall@k | points vs widest | top-1 | recall@k' | worst layer recall@k | Qwen3 MB/layer (bf16) "
        "| Qwen3 HBM floor µs/layer | train s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Within 1 point of the {widest}-wide predictor: hidden {', '.join(map(str, sorted(fit)))}. The last two "
        "columns are what one layer's predictor would read at the Qwen3-30B-A3B shape (input 2048, 128 experts) "
        f"and that read at {QWEN3['hbm_gb_s']:.0f} GB/s: a lower bound on its time in a step, which kernel "
        "launches, not bytes, dominate at these sizes (measure on the GPU).",
        "",
        "```bash",
        doc["command"],
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(doc["widths"], key=lambda r: r["hidden"])
    h = [r["hidden"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (
        ("recall_at_k", "recall@k"),
        ("overprov_recall", "recall@k'"),
        ("top1_accuracy", "top-1"),
    ):
        ax.plot(h, [100 * r["mean"][key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("predictor hidden width")
    ax.set_ylabel("held-out, mean over layers (%)")
    ax.set_title(f"Predictor recall against width ({doc['name']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trace_args(ap)
    ap.add_argument("--widths", default="2048,1024,512,256,128,64,32")
    args = ap.parse_args()
    ts = load_traces(args)
    k_prime = default_k_prime(ts.top_k, ts.num_experts)
    doc = {
        **run_header("predictor_width", args, ts, k_prime),
        "qwen3_shape": QWEN3,
        "widths": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"predictor_width_{args.name}"
    for h in (int(x) for x in args.widths.split(",")):
        doc["widths"].append(width_row(ts, h, args, k_prime))
        m = doc["widths"][-1]["mean"]
        print(f"hidden {h}: recall@k {m['recall_at_k']:.4f}, top-1 {m['top1_accuracy']:.4f}", flush=True)
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")  # as it goes
    add_losses(doc)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc, stem.with_suffix(".md"))
    plot(doc, stem.with_suffix(".png"))
    print(f"wrote {stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
