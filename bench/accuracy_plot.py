"""accuracy.png (and each run's PNG): per-layer recall of both predictor pairings against the baselines.

One row per model: left, recall@k and over-provisioning recall per MoE layer for the two pairings, with the
router / cross-layer / frequency-prior baselines' recall@k; right, mean recall against k' (experts fetched).
"""

from __future__ import annotations

from pathlib import Path

PAIR_LABEL = {"arch1_rank_bce": "Arch 1 + ranking-aware BCE", "arch2_wbce": "Arch 2 + weighted BCE"}


def plot_runs(runs: dict[str, dict], path: Path) -> Path:
    """Per-layer recall@k (and r@k') of both pairings and the baselines, one row per model; the k' sweep."""
    from matplotlib.figure import Figure

    names = [n for n, r in runs.items() if r.get("predictors")]
    fig = Figure(figsize=(13, 4.2 * max(1, len(names))), layout="constrained")
    axes = fig.subplots(max(1, len(names)), 2, squeeze=False)
    for row, name in enumerate(names):
        preds = runs[name]["predictors"]
        ax, ax2 = axes[row]
        first = next(iter(preds.values()))["mmlu_heldout"]
        layers = [r["layer"] for r in first["layers"]]
        for n, (pair, r) in enumerate(preds.items()):
            res, color = r["mmlu_heldout"], f"C{n}"
            label = PAIR_LABEL.get(pair, pair)
            recall = [x["predictor"]["recall_at_k"] for x in res["layers"]]
            over = [x["predictor"]["overprov_recall"] for x in res["layers"]]
            ax.plot(layers, recall, marker="o", color=color, label=f"{label} r@k")
            ax.plot(layers, over, marker=".", ls="--", color=color, label=f"{label} r@{res['k_prime']}")
            sweep = res["overall"]["predictor"].get("recall_sweep") or {}
            ax2.plot([int(k) for k in sweep], list(sweep.values()), marker="o", color=color, label=label)
        for n, method in enumerate(("router", "crosslayer", "prior"), start=2):
            pts = [(r["layer"], r[method]["recall_at_k"]) for r in first["layers"] if r[method] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="x", ls=":", color=f"C{n}", label=f"{method} r@k")
            sweep = (first["overall"].get(method) or {}).get("recall_sweep") or {}
            if sweep:
                ax2.plot(
                    [int(k) for k in sweep],
                    list(sweep.values()),
                    marker="x",
                    ls=":",
                    color=f"C{n}",
                    label=method,
                )
        k = first["top_k"]
        ax.set(
            title=f"{name}: per-layer recall of the true top-{k} (held-out MMLU)",
            xlabel="MoE layer",
            ylim=(0, 1.01),
        )
        ax2.set(title=f"{name}: mean recall vs experts fetched k'", xlabel="k'", ylim=(0, 1.01))
        for a in (ax, ax2):
            a.xaxis.get_major_locator().set_params(integer=True)
            a.axhline(0.95, color="grey", lw=0.6)
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
