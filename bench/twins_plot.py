"""bench/results/twins.png from the summary of `bench/twins_report.py` (its `twins.json` dict).

Left: LRU hit rate against the cache size (slots / experts per layer) of each twin's cold set, the published
Qwen3-30B-A3B points beside them. Right: decode tok/s against the cache fraction per policy, batch 1, the
runner's chosen steps, for the DeepSeek-V2-Lite twin's replay (its resident speed and the random-weight
run's `none` at 50% marked). Imports matplotlib (at call time) only.
"""

from __future__ import annotations

from pathlib import Path

DECODE_SHAPE = "deepseek-v2-lite"  # the representative twin
POLICIES = ("none", "exact", "overprovision", "oracle")


def plot(data: dict, path: Path) -> Path:
    """Two panels: cold LRU curves vs the published points; the DeepSeek twin's decode tok/s per policy."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(13, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    for n, t in enumerate(data["twins"].values()):
        curve = t["routing"]["cold"]["curve"]
        tr = t["training"]
        label = f"{t['real']} twin ({tr['experts']} experts, top-{tr['top_k']}; {tr['tokens_seen'] / 1e6:.1f}M tokens)"
        left.plot(
            [c["fraction"] for c in curve], [c["lru"] for c in curve], "-o", ms=3, color=f"C{n}", label=label
        )
    pub = data["published"]
    px = [s / pub["num_experts"] for s in pub["lru_slots"]]
    left.plot(
        px,
        pub["lru_hit_rate"],
        "s",
        color="tab:red",
        ms=8,
        label="Qwen3-30B-A3B real weights (kekzl/imp #1374)",
    )
    left.axvline(1.0, color="grey", lw=0.8, ls=":")
    left.set(
        xlabel="cache slots per layer / experts per layer (>= 1: every expert fits, cold misses only)",
        ylabel="LRU hit rate (cold cache, 256-token streams)",
        xlim=(0, 2.0),
        ylim=(0, 1.02),
        title="Routing twins' cold LRU hit rate against the published one",
    )
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    rows = [
        r for r in data["decode"] if r["shape"] == DECODE_SHAPE and r["batch"] == 1 and r["step"] == "chosen"
    ]
    for n, policy in enumerate(POLICIES):
        pts = sorted((r["fraction"], r["tok_s"]) for r in rows if r["policy"] == policy and r["fraction"] < 1)
        if pts:
            right.plot(*zip(*pts, strict=True), "-o", color=f"C{n}", label=f"`{policy}`")
    resident = [r["tok_s"] for r in rows if r["policy"] == "none" and r["fraction"] == 1.0]
    if resident:
        right.plot(
            [1.0],
            resident,
            "*",
            ms=12,
            color="black",
            label=f"every expert resident ({resident[0]:.0f} tok/s)",
        )
    rand = data.get("random_weight", {}).get(DECODE_SHAPE)
    if rand:
        right.plot(
            [0.5], [rand["none_50"]["tok_s"]], "x", ms=9, color="C0", label="`none`, random-weight routing"
        )
    right.set_yscale("log")
    ticks = [
        t for t in (10, 20, 30, 50, 100, 200, 300) if t <= 1.3 * max([r["tok_s"] for r in rows] or [300])
    ]
    right.set_yticks(ticks, labels=[str(t) for t in ticks])
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set(
        xlabel="GPU expert cache / all routed experts",
        ylabel="decode tok/s (batch 1, median, log scale)",
        xlim=(0, 1.05),
        title=f"{data['twins'].get(DECODE_SHAPE, {}).get('real', DECODE_SHAPE)} shape, twin-replayed routing, H200",
    )
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
