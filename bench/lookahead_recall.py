"""Recall against lookahead distance (issue #17, item 2): predictors trained from MoE layer i's pre-attention
input to name the experts of layer i + d, for each distance d, with the untrained baselines beside.

    python bench/lookahead_recall.py --out bench/results                  # the built-in model, CPU, minutes
    python bench/lookahead_recall.py --traces DIR --name deepseek_twin --device cuda --hidden 2048 --out ...

Without `--traces` it collects the built-in model's traces first (`predictors.collect`, float32, CPU):
`--prompts` MMLU test questions (shuffled with the seed) up to `--samples` tokens, 256 tokens per prompt at
most. For each distance (`predictors.lookahead.LookaheadTraces`) it trains a bank with `predictors.train`
(the same held-out prompts at every distance) and reports held-out recall@k, top-1 and recall at k'
(the overprovision width), the mean over source layers and per target layer, next to:
- `router ahead`: layer i + d's own router applied to layer i's input (d = 0: the router itself; d = 1: the
  simulator's `crosslayer`), which costs no training;
- `prior`: the target layer's k most frequent experts in the training split.
The published reference (the issue): a linear probe on OLMoE, 84.5% same layer, 81.9% two layers ahead.
Writes `<out>/lookahead_<name>.{json,md,png}`. Imports torch, matplotlib and `predictors` only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictors.lookahead import LookaheadTraces  # noqa: E402
from predictors.metrics import all_metrics, default_k_prime  # noqa: E402
from predictors.traces import TraceSet  # noqa: E402
from predictors.train import predict_scores, train_bank  # noqa: E402

PUBLISHED = {"source": "OLMoE, linear probe (issue #17)", "recall_by_distance": {"0": 0.845, "2": 0.819}}


def collect_builtin(out: Path, prompts_dir: Path, samples: int, seed: int) -> TraceSet:
    from predictors.collect import collect, load_model_for_tracing, read_prompts

    prompts = read_prompts(prompts_dir)
    random.Random(seed).shuffle(prompts)
    model, tok = load_model_for_tracing(ROOT / "engine" / "model" / "assets", "cpu", "float32")
    collect(
        model, tok, prompts, out, max_samples=samples, max_prompt_tokens=256, batch_size=8, progress=False
    )
    return TraceSet(out)


def add_trace_args(ap: argparse.ArgumentParser) -> None:
    """The arguments naming the trace set (or how to collect the built-in model's) and the bank training,
    shared with bench/predictor_width.py."""
    ap.add_argument(
        "--traces", type=Path, default=None, help="a trace set (default: collect the built-in model's)"
    )
    ap.add_argument("--prompts", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu" / "test")
    ap.add_argument("--samples", type=int, default=40_000, help="tokens to trace when collecting")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lookahead"))
    ap.add_argument("--name", default="builtin")
    ap.add_argument("--routing", default="trained (the built-in model's own routers)")
    ap.add_argument("--arch", type=int, choices=(1, 2), default=2)
    ap.add_argument("--loss", default="wbce")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)


def load_traces(args) -> TraceSet:
    """`--traces`, or the built-in model's traces in `--work` (collected there first when missing)."""
    if args.traces is not None:
        return TraceSet(args.traces)
    args.traces = args.work / "traces"
    if (args.traces / "manifest.json").exists():
        return TraceSet(args.traces)
    return collect_builtin(args.traces, args.prompts, args.samples, args.seed)


def run_header(kind: str, args, ts: TraceSet, k_prime: int) -> dict:
    """The head of a result document over a trace set: what ran, on which traces and routing."""
    return {
        "kind": kind,
        "name": args.name,
        "routing": args.routing,
        "command": "python " + " ".join(sys.argv),
        "traces": ts.summary(),
        "num_layers": ts.num_layers,
        "num_experts": ts.num_experts,
        "top_k": ts.top_k,
        "k_prime": k_prime,
        "d_model": ts.d_model,
        **{k: getattr(args, k) for k in ("arch", "loss", "epochs", "seed")},
    }


def baselines(la: LookaheadTraces, held: torch.Tensor, train: torch.Tensor, k_prime: int) -> list[dict]:
    """Per source layer: the target layer's router on the source input, and the target layer's prior."""
    routers = la.routers()
    out = []
    for i in range(la.num_layers):
        data = la.layer(i, held)
        j = i + la.distance
        w, b = routers[f"router.{j}"], routers.get(f"router_bias.{j}")
        ahead = torch.nn.functional.linear(data.x.float(), w, b)  # [N, E]
        counts = torch.bincount(la.layer(i, train).topk.reshape(-1), minlength=la.num_experts).float()
        out.append(
            {
                "router_ahead": all_metrics(ahead, data.topk, k_prime),
                "prior": all_metrics(counts.expand(data.x.shape[0], -1), data.topk, k_prime),
            }
        )
    return out


def distance_row(ts: TraceSet, d: int, args, k_prime: int, banks: dict | None = None) -> dict:
    """Train distance d's bank (1 row per source layer: its metrics and the baselines'); the bank itself
    goes into `banks[d]` when given."""
    la = LookaheadTraces(ts, d)
    t0 = time.monotonic()
    bank, report = train_bank(
        la, args.arch, args.loss, hidden=args.hidden, epochs=args.epochs, device=args.device, seed=args.seed,
        progress=False,
    )  # fmt: skip
    if banks is not None:
        banks[d] = bank
    train_mask, held_mask = la.split(0.1, args.seed)
    base = baselines(la, held_mask, train_mask, k_prime)
    layers = []
    for i in range(la.num_layers):
        data = la.layer(i, held_mask)
        pred = all_metrics(predict_scores(bank.layers[i], data.x, args.device), data.topk, k_prime)
        layers.append({"source_layer": i, "target_layer": i + d, "predictor": pred, **base[i]})

    def mean(method: str, key: str) -> float:
        return sum(r[method][key] for r in layers) / len(layers)

    return {
        "distance": d,
        "seconds": round(time.monotonic() - t0, 1),
        "heldout_samples": int(held_mask.sum()),
        "mean": {
            m: {key: mean(m, key) for key in ("recall_at_k", "top1_accuracy", "overprov_recall")}
            for m in ("predictor", "router_ahead", "prior")
        },
        "layers": layers,
    }


def common_targets(doc: dict) -> None:
    """Each distance's means over the target layers every distance reaches (>= the largest d): the means over
    all source layers compare different target layers, and later layers' routing is easier to guess."""
    first = max(r["distance"] for r in doc["distances"])
    doc["common_target_layers"] = [first, doc["num_layers"] - 1]
    for r in doc["distances"]:
        rows = [x for x in r["layers"] if x["target_layer"] >= first]
        r["common_targets_mean"] = {
            m: {key: sum(x[m][key] for x in rows) / len(rows) for key in ("recall_at_k", "overprov_recall")}
            for m in ("predictor", "router_ahead", "prior")
        }


def write_md(doc: dict, path: Path) -> None:
    lines = [
        f"# Lookahead predictors: recall against distance ({doc['name']})",
        "",
        f"Predictor d layers ahead: MoE layer i's pre-attention input -> layer i + d's experts (arch {doc['arch']} + "
        f"{doc['loss']}, hidden {doc['hidden']}, {doc['epochs']} epochs at most), held-out prompts (10%, seed "
        f"{doc['seed']}), {doc['traces']['samples']} traced tokens of {doc['traces']['prompts']} prompts; "
        f"{doc['num_layers']} MoE layers x {doc['num_experts']} experts, top-{doc['top_k']}, k' = {doc['k_prime']}. "
        "Means over source layers. Routing: "
        f"{doc['routing']}. Command:",
        "",
        f"    {doc['command']}",
        "",
        "| d | predictor recall@k | top-1 | recall at k' | router ahead recall@k | prior recall@k | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["distances"]:
        p, ra, pr = r["mean"]["predictor"], r["mean"]["router_ahead"], r["mean"]["prior"]
        lines.append(
            f"| {r['distance']} | {100 * p['recall_at_k']:.1f}% | {100 * p['top1_accuracy']:.1f}% | "
            f"{100 * p['overprov_recall']:.1f}% | {100 * ra['recall_at_k']:.1f}% | {100 * pr['recall_at_k']:.1f}% | "
            f"{r['seconds']} |"
        )
    a, b = doc["common_target_layers"]
    lines += [
        "",
        f"The same target layers ({a}..{b}) at every distance: recall@k of the predictor / the router ahead / the prior",
        "",
        "| d | predictor | router ahead | prior |",
        "|---|---|---|---|",
        *(
            f"| {r['distance']} | "
            + " | ".join(
                f"{100 * r['common_targets_mean'][m]['recall_at_k']:.1f}%"
                for m in ("predictor", "router_ahead", "prior")
            )
            + " |"
            for r in doc["distances"]
        ),
    ]
    pub = doc["published"]["recall_by_distance"]
    lines += [
        "",
        f"Published ({doc['published']['source']}): {', '.join(f'd={d}: {100 * v:.1f}%' for d, v in pub.items())}.",
        "",
        "Per target layer, predictor recall@k (%):",
        "",
    ]
    for r in doc["distances"]:
        per = " ".join(f"{100 * x['predictor']['recall_at_k']:.0f}" for x in r["layers"])
        lines.append(
            f"- d={r['distance']} (targets {r['layers'][0]['target_layer']}..{r['layers'][-1]['target_layer']}): {per}"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = [r["distance"] for r in doc["distances"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, label, style in (
        ("predictor", "trained predictor, recall@k", "o-"),
        ("router_ahead", "layer i+d's router on layer i's input", "s--"),
        ("prior", "prior (most frequent experts)", "^:"),
    ):
        ax.plot(ds, [100 * r["mean"][method]["recall_at_k"] for r in doc["distances"]], style, label=label)
    ax.plot(ds, [100 * r["mean"]["predictor"]["overprov_recall"] for r in doc["distances"]], "o-", alpha=0.5,
            label=f"trained predictor, recall at k'={doc['k_prime']}")  # fmt: skip
    pub = doc["published"]["recall_by_distance"]
    ax.plot(
        [int(d) for d in pub], [100 * v for v in pub.values()], "kx", ms=9, label=doc["published"]["source"]
    )
    ax.set_xlabel("lookahead distance d (MoE layers)")
    ax.set_ylabel("held-out recall (%)")
    ax.set_title(f"{doc['name']}: predicting layer i+d's experts from layer i", fontsize=10)
    ax.set_xticks(ds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trace_args(ap)
    ap.add_argument("--distances", default="0,1,2,3")
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ts = load_traces(args)
    k_prime = default_k_prime(ts.top_k, ts.num_experts)
    doc = {
        **run_header("lookahead_recall", args, ts, k_prime),
        "hidden": args.hidden,
        "published": PUBLISHED,
        "distances": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for d in (int(x) for x in args.distances.split(",")):
        doc["distances"].append(distance_row(ts, d, args, k_prime))
        m = doc["distances"][-1]["mean"]
        print(
            f"d={d}: predictor recall@k {m['predictor']['recall_at_k']:.4f}, router ahead "
            f"{m['router_ahead']['recall_at_k']:.4f}, prior {m['prior']['recall_at_k']:.4f}",
            flush=True,
        )
        (args.out / f"lookahead_{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    common_targets(doc)
    (args.out / f"lookahead_{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc, args.out / f"lookahead_{args.name}.md")
    plot(doc, args.out / f"lookahead_{args.name}.png")
    print(f"wrote {args.out}/lookahead_{args.name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
