"""What predicting costs a decode step, from the decode records of `bench/gpu_predictor_kernel_session.sh`
(issue #17: at most 5 µs per layer inside a step on the Qwen3-30B-A3B shape).

    python bench/predictor_step_cost.py          # reads bench/results/decode_<shape>_predictor_<impl>.json

Each record ran `none` and `exact` with every expert resident in one process, so the only difference between
the two is the predictors: their cost per token is 1/tok_s(exact) - 1/tok_s(none), and per layer that over the
twin's MoE layers (`bench/twins/twin_replay_<shape>.json`). The implementations are named by the record:
torch's path or the one-launch kernel (`predictor_kernel`), in line or on a parallel branch of the step's
graph (`predictor_overlap`; records from before that setting have none: in line). Writes
`predictor_step_cost.json` and `.png` beside the records. Imports json and (for the plot) matplotlib only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_US = 5.0


def implementation(dec: dict) -> str:
    """'torch' or 'kernel', then ', in line' or ', parallel branch'."""
    impl = "kernel" if dec.get("predictor_kernel") else "torch"
    return impl + (", parallel branch" if dec.get("predictor_overlap") else ", in line")


def resident(dec: dict, policy: str) -> float | None:
    """tok/s of `policy` with every expert resident (chosen steps), or None if the record lacks it."""
    for c in dec["configs"]:
        if c["policy"] == policy and c["fraction"] == 1.0 and not c.get("variant"):
            return c["summary"]["tok_s_median"]
    return None


def rows(results: Path, twins: Path) -> list[dict]:
    """One row per record that ran `none` and `exact` at a full cache."""
    out = []
    for path in sorted(results.glob("decode_*_predictor_*.json")):
        dec = json.loads(path.read_text())
        none, exact = resident(dec, "none"), resident(dec, "exact")
        meta = twins / f"twin_replay_{dec['preset']}.json"
        if none is None or exact is None or not meta.exists():
            continue
        layers = json.loads(meta.read_text())["num_moe_layers"]
        ms = 1e3 * (1 / exact - 1 / none)
        out.append(
            {
                "shape": dec["preset"],
                "implementation": implementation(dec),
                "record": path.name,
                "device": dec.get("device"),
                "routing": dec.get("routing"),
                "moe_layers": layers,
                "none_tok_s": round(none, 2),
                "exact_tok_s": round(exact, 2),
                "ratio": round(exact / none, 3),
                "ms_per_token": round(ms, 4),
                "us_per_layer": round(1e3 * ms / layers, 2),
            }
        )
    return out


def plot(table: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    shapes = sorted({r["shape"] for r in table})
    impls = sorted({r["implementation"] for r in table})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, shape in enumerate(shapes):
            r = next((r for r in table if r["shape"] == shape and r["implementation"] == impl), None)
            if r is not None:
                xs.append(i + j * width)
                ys.append(r["us_per_layer"])
        ax.bar(xs, ys, width=width, label=impl)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(TARGET_US, color="grey", ls="--", lw=1, label=f"{TARGET_US:g} µs target")
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(shapes))], shapes)
    ax.set_ylabel("µs per MoE layer, inside a decode step")
    ax.set_title("What predicting costs a step (exact against none, every expert resident, batch 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--twins", type=Path, default=ROOT / "bench" / "twins")
    ap.add_argument("--out", type=Path, default=None, help="default: the results folder")
    args = ap.parse_args()
    table = rows(args.results, args.twins)
    if not table:
        sys.exit(f"{args.results}: no decode_<shape>_predictor_<impl>.json with none and exact at 100%")
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictor_step_cost.json").write_text(json.dumps(table, indent=1) + "\n")
    plot(table, out / "predictor_step_cost.png")
    for r in table:
        print(
            f"{r['shape']:18s} {r['implementation']:24s} none {r['none_tok_s']:6.1f} exact {r['exact_tok_s']:6.1f} "
            f"tok/s ({r['ratio']:.2f}): {r['ms_per_token']:.3f} ms a token, {r['us_per_layer']:.1f} µs a layer"
        )


if __name__ == "__main__":
    main()
