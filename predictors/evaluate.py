"""Evaluation of a predictor bundle on a trace set, with baselines on the same samples.

Methods, per MoE layer i (all rank the E experts for each sample; every metric is in predictors.metrics):
- predictor: the bundle's layer-i predictor on layer i's pre-attention input x_i.
- router: layer i's own router weights applied to x_i (no training): softmax(W_i x_i + b_i) ranking.
- crosslayer (FATE-style): layer i's router applied to the previous MoE layer's pre-attention input
  x_{i-1}. Undefined for the first MoE layer (there is no earlier recorded input): reported as null, and
  the overall cross-layer numbers average MoE layers 1..L-1 only.
- prior: the k most frequent experts of layer i in the bundle's training split (the same for every token).

Samples: by default the held-out prompts of the bundle's own split (same holdout_frac and seed on the
trace set); `split="all"` uses every sample (for a trace set the bundle never saw).
Latency: median of many timed predictor calls at batch 1 on the current device (CUDA events on GPU).
The table (rich), JSON and PNG renderers at the bottom take the result dict.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch
from rich import box
from rich.table import Table

from engine.prefetch.bundle import check_fingerprint
from engine.prefetch.nets import PredictorBank
from predictors.metrics import all_metrics, default_k_prime
from predictors.traces import TraceSet
from predictors.train import default_device, predict_scores

log = logging.getLogger(__name__)

METHODS = ("predictor", "router", "crosslayer", "prior")


def time_predictor(predictor: torch.nn.Module, x1: torch.Tensor, iters: int, warmup_s: float = 0.2) -> float:
    """Median milliseconds of one predictor call on x1[1, d] (already on the device), batch 1.

    Warms up for at least 10 calls and `warmup_s` seconds first (thread pools and kernels settle).
    """
    predictor.eval()
    cuda = x1.device.type == "cuda"

    def once() -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            predictor(x1)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter_ns()
        predictor(x1)
        return (time.perf_counter_ns() - t0) / 1e6

    with torch.inference_mode():
        t_end, n = time.perf_counter() + warmup_s, 0
        while n < 10 or time.perf_counter() < t_end:
            once()
            n += 1
        return statistics.median(once() for _ in range(max(1, iters)))


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _overall(per_layer: list[dict | None]) -> dict[str, object] | None:
    rows = [r for r in per_layer if r is not None]
    if not rows:
        return None
    out = {
        key: _mean(rows, key) for key in ("set_accuracy", "recall_at_k", "top1_accuracy", "overprov_recall")
    }
    out["recall_sweep"] = {
        kp: sum(r["recall_sweep"][kp] for r in rows) / len(rows) for kp in rows[0]["recall_sweep"]
    }
    out["layers_averaged"] = len(rows)
    return out


def evaluate(
    bank: PredictorBank,
    manifest: dict,
    traces: TraceSet,
    *,
    split: str = "heldout",
    k_prime: int | None = None,
    sweep: list[int] | None = None,
    device: str | None = None,
    latency_iters: int = 200,
    bundle_path: str = "",
) -> dict:
    """Per-layer and overall metrics of the predictor and the baselines; see the module docstring."""
    check_fingerprint(
        bundle_path or "(in memory)", manifest, traces.fingerprint, what=f"trace set {traces.dir}"
    )
    device = device or default_device()
    k, num_experts = traces.top_k, traces.num_experts
    k_prime = k_prime or default_k_prime(k, num_experts)
    sweep = sorted(set(sweep or range(k, min(num_experts, 3 * k) + 1)) | {k_prime})
    if split == "heldout":
        training = manifest.get("training", {})
        _, mask = traces.split(float(training.get("holdout_frac", 0.1)), int(training.get("seed", 0)))
    elif split == "all":
        mask = None
    else:
        raise ValueError(f"split must be 'heldout' or 'all', got {split!r}")
    bank = bank.to(device).eval()
    routers = traces.routers()
    layers, prev_x = [], None
    for i in range(traces.num_layers):
        data = traces.layer(i, mask)
        w, b = routers[f"router.{i}"], routers.get(f"router_bias.{i}")  # [E, d], [E]

        def router_scores(x: torch.Tensor, w=w, b=b) -> torch.Tensor:
            return torch.nn.functional.linear(x.float(), w, b)  # [N, E] logits rank like softmax scores

        per = {
            "predictor": all_metrics(
                predict_scores(bank.layers[i], data.x, device), data.topk, k_prime, sweep
            ),
            "router": all_metrics(router_scores(data.x), data.topk, k_prime, sweep),
            "crosslayer": None
            if prev_x is None
            else all_metrics(router_scores(prev_x), data.topk, k_prime, sweep),
            "prior": all_metrics(
                bank.expert_counts[i].cpu().expand(data.x.shape[0], -1), data.topk, k_prime, sweep
            ),
        }
        x1 = data.x[:1].to(device).float()  # [1, d]
        per["predictor"]["latency_ms"] = time_predictor(bank.layers[i], x1, latency_iters)
        layers.append({"layer": i, "layer_id": traces.layer_ids[i], "samples": int(data.x.shape[0]), **per})
        prev_x = data.x
    overall = {m: _overall([row[m] for row in layers]) for m in METHODS}
    overall["predictor"]["latency_ms_median"] = statistics.median(
        r["predictor"]["latency_ms"] for r in layers
    )
    return {
        "bundle": bundle_path,
        "traces": str(traces.dir),
        "fingerprint": traces.fingerprint,
        "model_type": traces.manifest["model_type"],
        "arch": manifest.get("arch"),
        "loss": manifest.get("loss"),
        "split": split,
        "samples_per_layer": layers[0]["samples"],
        "top_k": k,
        "num_experts": num_experts,
        "k_prime": k_prime,
        "sweep": sweep,
        "device": str(device)
        + (f" ({torch.cuda.get_device_name()})" if str(device).startswith("cuda") else ""),
        "notes": {
            "set_accuracy": "predicted top-k equals the true top-k as a set (strict exact match)",
            "recall_at_k": "mean fraction of the true top-k inside the predicted top-k (the paper's 'exact-match' "
            "figures are most plausibly this)",
            "overprov_recall": f"mean fraction of the true top-k inside the predicted top-{k_prime}",
            "top1_accuracy": "the best-scored expert is one of the true top-k",
            "crosslayer": "layer i's router on MoE layer i-1's pre-attention input; undefined for MoE layer 0 "
            "(null), so its overall numbers average MoE layers 1..L-1",
            "prior": "the k most frequent experts of the bundle's training split",
            "latency_ms": "median of timed predictor calls at batch 1 on the device",
        },
        "layers": layers,
        "overall": overall,
    }


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def result_table(result: dict) -> Table:
    """A rich table: one row per MoE layer and an overall row (percentages; latency in ms)."""
    kp = result["k_prime"]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{result['model_type']}: {result['split']} split, {result['samples_per_layer']} samples/layer, "
        f"top-{result['top_k']} of {result['num_experts']}",
    )
    k = result["top_k"]
    table.add_column("layer", no_wrap=True)
    for col in ("set", f"r@{k}", f"r@{kp}", "top-1", "router", "cross", "prior", "ms"):
        table.add_column(col, justify="right", no_wrap=True)
    table.caption = (
        f"predictor: set = exact top-{k} set, r@{k} = recall of the true top-{k} in the predicted top-{k}, "
        f"r@{kp} = in the top-{kp}, top-1 = best expert is routed; router / cross-layer / prior baselines show "
        f"r@{k}; ms = predictor latency at batch 1"
    )

    def row(name: str, per: dict, latency: float) -> None:
        cross = per["crosslayer"]
        table.add_row(
            name,
            _pct(per["predictor"]["set_accuracy"]),
            _pct(per["predictor"]["recall_at_k"]),
            _pct(per["predictor"]["overprov_recall"]),
            _pct(per["predictor"]["top1_accuracy"]),
            _pct(per["router"]["recall_at_k"]),
            _pct(cross and cross["recall_at_k"]),
            _pct(per["prior"]["recall_at_k"]),
            f"{latency:.3f}",
        )

    for layer in result["layers"]:
        row(f"{layer['layer']} (L{layer['layer_id']})", layer, layer["predictor"]["latency_ms"])
    table.add_section()
    row("overall", result["overall"], result["overall"]["predictor"]["latency_ms_median"])
    return table


def plot_result(result: dict, path: str | Path) -> Path:
    """Per-layer recall@k, over-provisioning recall and top-1 of every method, plus the overall k' sweep."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    x = [r["layer"] for r in result["layers"]]
    panels = (
        ("recall_at_k", f"recall@{result['top_k']}"),
        ("overprov_recall", f"recall@{result['k_prime']}"),
        ("top1_accuracy", "top-1 accuracy"),
    )
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for method in METHODS:
            pts = [
                (xi, r[method][key])
                for xi, r in zip(x, result["layers"], strict=True)
                if r[method] is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.set(title=title, xlabel="MoE layer", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    for method in METHODS:
        overall = result["overall"][method]
        if overall is not None:
            kps = [int(k) for k in overall["recall_sweep"]]
            ax.plot(kps, list(overall["recall_sweep"].values()), marker="o", label=method)
    ax.set(title="overall recall of the true top-k vs experts fetched k'", xlabel="k'", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"{result['model_type']} predictors (arch {result['arch']}, {result['loss']}), {result['split']} split"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
