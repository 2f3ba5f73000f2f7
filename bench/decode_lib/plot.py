"""The decode benchmark's PNG: tokens/s against cache size, one line per policy (segmented steps dashed,
coded copies dotted), the plain forward as a gray line.

Imports matplotlib only (Agg backend, at call time).
"""

from __future__ import annotations

from pathlib import Path

LABELS = {  # the variants drawn, and their legend suffixes
    None: "",
    "segmented": " (segmented steps)",
    "coded": " (coded copies)",
    "coded-segmented": " (coded copies, segmented steps)",
}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_policy: dict[str, list[tuple[float, float, float, float]]] = {}
    for c in result["configs"]:
        variant = c.get("variant")
        if variant not in LABELS:
            continue
        s = c["summary"]
        name = c["policy"] + LABELS[variant]
        by_policy.setdefault(name, []).append(
            (c["fraction"], s["tok_s_median"], s["tok_s_min"], s["tok_s_max"])
        )
    for policy, pts in by_policy.items():
        pts.sort()
        x = [100 * p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(
            x, y, yerr=err, marker="o", capsize=3, label=policy,
            ls=":" if "coded" in policy else "--" if "segmented" in policy else "-",
        )  # fmt: skip
    plain = result.get("plain")
    if plain and "tok_s_median" in plain:
        ax.axhline(
            plain["tok_s_median"], color="gray", ls="--", lw=1, label="plain transformers (all on GPU)"
        )
    ax.set_yscale("log")
    ax.set_xlabel("expert cache (% of all routed experts on the GPU)")
    ax.set_ylabel("decode tokens/s (batch 1; median, min-max bars)")
    ax.set_title(
        f"{result['preset']} (random weights) on {result['device']}\n{result.get('routing', 'random')} routing",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
