"""Routing figures next to the published real-model ones, and the run's PNG (`bench/train_twin.py`, phase 6).

`compare` puts, side by side, the twin's cold-cache LRU hit rate at the published slot counts (scaled to the
twin's experts: slots x E / 128) and its reuse figures against Qwen3-30B-A3B's published ones, with the
distance in points. The published figures are Qwen3-30B-A3B's only; for the other twins they are shown as
the reference a trained router of another family may differ from, not as a target.
`plot` draws the hit rate against the cache size (as a share of the layer's experts): the twin's LRU, LFU
and Belady curves per stream set, and the published LRU points. Imports matplotlib (at call time) only.
"""

from __future__ import annotations

from pathlib import Path

from bench.twin_cache import PUBLISHED_QWEN3


def compare(cache: dict, reuse: dict, routing: dict) -> dict:
    """{lru: [{published_slots, twin_slots, published, twin, diff_points}], reuse: {...}, entropy: ...}."""
    pub = dict(zip(PUBLISHED_QWEN3["lru_slots"], PUBLISHED_QWEN3["lru_hit_rate"], strict=True))
    lru = []
    for row in cache["sizes"]:
        if row["published_slots"] is None:
            continue
        p = pub[row["published_slots"]]
        lru.append(
            {
                "published_slots": row["published_slots"],
                "twin_slots": row["slots"],
                "fraction": row["fraction"],
                "published": p,
                "twin": row["lru"],
                "twin_lfu": row["lfu"],
                "twin_belady": row["belady"],
                "diff_points": round(100 * (row["lru"] - p), 1),
            }
        )
    reuse_rows = {
        key: {"published": PUBLISHED_QWEN3[key], "twin": reuse[key]}
        for key in ("reuse_next", "reuse_within_8", "median_reuse_distance")
    }
    mean = routing["mean"]
    return {
        "published_source": PUBLISHED_QWEN3["source"],
        "lru": lru,
        "reuse": reuse_rows,
        "usage_entropy_norm": {"published": None, "twin": mean["usage_entropy_norm"]},
        "next_token_overlap": {
            "published": PUBLISHED_QWEN3["reuse_next"],
            "twin": mean["reuse_overlap"],
            "uniform": routing["uniform_reuse_overlap"],
        },
    }


def plot(shape: str, caches: dict[str, dict], path: Path, title_extra: str = "") -> Path:
    """Hit rate vs cache size (share of experts per layer); caches = {stream set name: cold_cache result}."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    styles = {"lru": "-", "lfu": "--", "belady": ":"}
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown"]
    for color, (name, cache) in zip(colors, caches.items(), strict=False):
        xs = [r["fraction"] for r in cache["sizes"]]
        for ev, ls in styles.items():
            ax.plot(
                xs,
                [r[ev] for r in cache["sizes"]],
                ls,
                marker="o",
                ms=3,
                color=color,
                label=f"twin {ev.upper() if ev != 'belady' else 'Belady'} ({name})",
            )
    e = PUBLISHED_QWEN3["num_experts"]
    px = [s / e for s in PUBLISHED_QWEN3["lru_slots"]]
    ax.plot(
        px,
        PUBLISHED_QWEN3["lru_hit_rate"],
        "s",
        color="tab:red",
        ms=8,
        label="Qwen3-30B-A3B real weights, LRU (kekzl/imp #1374)",
    )
    for s, x, y in zip(PUBLISHED_QWEN3["lru_slots"], px, PUBLISHED_QWEN3["lru_hit_rate"], strict=True):
        ax.annotate(
            f"{s} slots", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7, color="tab:red"
        )
    ax.set(
        xlabel="cache slots per layer / experts per layer (>= 1: every expert fits, cold misses only)",
        ylabel="hit rate (cold cache, one stream at a time)",
        ylim=(0, 1.02),
        xlim=(0, 2.0),
        title=f"{shape} twin: per-layer expert cache hit rate{title_extra}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
