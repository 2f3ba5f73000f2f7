"""What issue #17's speed targets need, from the routing twins' simulated bytes and the engine's measured `none`.

    python bench/target_ceiling.py     # bench/results/{eviction_twins,twin_replay_summary}.json -> target_ceiling.*

For each twin and cache size, `bench/twin_eviction.py` (the simulator's model of the engine's cache over the
twin's replayed routing) gives the bytes per token each eviction order copies; `twin_replay_summary.json` the engine's measured batch-1
`none` of the same twin and cache (twin-replayed decode on the H200, LRU, the runner's own choice of steps). With
perfect prediction issued early enough that every copy overlaps compute (no wasted bytes: the same copies as
`none`'s, earlier), a token takes max(resident step, bytes / measured host-to-device bandwidth): the `overlap_ms` of the rows. So
the most any prefetcher can gain over `none` with an eviction order is none's measured time over that bound,
the **ceiling**. The target (1.5x `none` at 50%, 2x at 25%) allows none's time / target per token; at the
measured bandwidth that is a byte budget, and its ratio to what LFU (the best online order measured) copies is
how far the copies must shrink (by a better order, or by fewer bytes per expert) for the target to be
reachable at all. Belady-optimal eviction (offline, knows the future) bounds every order. With
`expert_entropy.json` (`bench/expert_entropy.py`) present, each row also gives LFU's ceiling if the copies
were the lossless Huffman-coded size of the experts (the GPU's decoding taken as free).

Imports json, argparse and matplotlib (for the plot) only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {0.5: 1.5, 0.25: 2.0}  # issue #17: x `none` at a 50% and a 25% cache
ORDERS = ("lru", "lfu", "belady")


def measured_none(summary: list[dict]) -> dict[tuple[str, float], dict]:
    """{(shape, cache fraction): the first batch-1 LRU `none` record (the runner's chosen steps)} of
    `twin_replay_summary.json`."""
    out: dict[tuple[str, float], dict] = {}
    for r in summary:
        if (r["policy"], r["batch"], r["step"], r["eviction"]) == ("none", 1, "chosen", "lru"):
            out.setdefault((r["shape"], r["cache_fraction"]), r)
    return out


def ceilings(doc: dict, summary: list[dict], coded_ratio: float | None = None) -> list[dict]:
    """One row per twin and target cache size with a measured engine `none` in `summary`; with
    `coded_ratio` (coded expert bytes / bf16 bytes) also LFU's ceiling with copies that much smaller."""
    nones, out = measured_none(summary), []
    for twin in doc["twins"]:
        tm = twin["time_model"]
        by = {(r["fraction"], r["eviction"], r["policy"]): r for r in twin["rows"]}
        for fraction, target in TARGETS.items():
            none = nones.get((twin["twin"], fraction))
            if none is None or (fraction, "lru", "none") not in by:
                continue
            none_ms = 1e3 / none["tok_s"]
            row = {
                "twin": twin["twin"],
                "cache_fraction": fraction,
                "target": target,
                "engine_none_tok_s": round(none["tok_s"], 2),
                "engine_none_source": none["source"],
                "engine_none_ms": round(none_ms, 2),
                "resident_ms": round(tm["step_ms"], 2),
                "bandwidth_gbs": round(tm["bandwidth_gbs"], 1),
            }
            for order in ORDERS:
                r = by[(fraction, order, "none")]  # perfect prediction copies the same bytes, earlier
                row[f"{order}_mb_per_token"] = round(r["bytes_per_token"] / 1e6, 1)
                row[f"{order}_ceiling"] = round(none_ms / r["overlap_ms"], 3)
            if coded_ratio is not None:
                lfu_ms = max(tm["step_ms"], row["lfu_mb_per_token"] * coded_ratio / tm["bandwidth_gbs"])
                row["coded_ratio"] = coded_ratio
                row["lfu_coded_ceiling"] = round(none_ms / lfu_ms, 3)
            allowed_ms = none_ms / target
            row["allowed_ms"] = round(allowed_ms, 2)
            if allowed_ms <= tm["step_ms"]:  # not even a resident step fits
                row["allowed_mb_per_token"] = 0.0
            else:
                row["allowed_mb_per_token"] = round(allowed_ms * tm["bandwidth_gbs"], 1)  # ms x GB/s = MB
            row["shrink_vs_lfu"] = round(row["allowed_mb_per_token"] / row["lfu_mb_per_token"], 3)
            row["reachable_online"] = row["lfu_ceiling"] >= target or row["lru_ceiling"] >= target
            out.append(row)
    return out


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# What the speed targets need (issue #17)",
        "",
        f"`{command}`, from `eviction_twins.json` (twin-replayed routing, the simulator's cache) and each twin's",
        "measured H200 `none` (batch 1, `twin_replay_summary.json`). A ceiling is `none`'s measured time over max(resident step, bytes /",
        "bandwidth) with every copy predicted and overlapped; the byte budget is what the target allows per",
        "token at the measured bandwidth. The last column: LFU's ceiling if every expert crossed PCIe with its",
        "exponents Huffman-coded (`expert_entropy.json`, the built-in model's trained experts; lossless), the",
        "GPU's decoding taken as free (it is not built).",
        "",
        "| twin | cache | target | `none` tok/s | ceiling: LRU · LFU · Belady | MB/token: LRU · LFU · Belady "
        "| budget MB/token | budget / LFU | LFU, coded experts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['twin']} | {100 * r['cache_fraction']:.0f}% | {r['target']:g}× | {r['engine_none_tok_s']:.1f} | "
            f"{r['lru_ceiling']:.2f} · {r['lfu_ceiling']:.2f} · {r['belady_ceiling']:.2f} | "
            f"{r['lru_mb_per_token']:,.0f} · {r['lfu_mb_per_token']:,.0f} · {r['belady_mb_per_token']:,.0f} | "
            f"{r['allowed_mb_per_token']:,.0f} | {r['shrink_vs_lfu']:.2f} | "
            + (
                f"{r['lfu_coded_ceiling']:.2f} ({r['coded_ratio']:.3f} of the bytes) |"
                if "coded_ratio" in r
                else "— |"
            )
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 4.2))
    labels = [f"{r['twin']}\n{100 * r['cache_fraction']:.0f}%" for r in rows]
    series = [(f"{o}_ceiling", f"ceiling with {o}") for o in ORDERS]
    if all("lfu_coded_ceiling" in r for r in rows):
        series.append(("lfu_coded_ceiling", f"lfu, experts coded to {rows[0]['coded_ratio']:.2f} (lossless)"))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r[key] for r in rows], width, label=label, hatch="//" if "coded" in key else None)
    for j, r in enumerate(rows):
        ax.hlines(r["target"], j - 0.45, j + 0.45, colors="k", linestyles="--")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("× measured `none` (batch 1)")
    ax.set_title("Perfectly predicted, perfectly overlapped copies against the targets (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eviction", type=Path, default=ROOT / "bench" / "results" / "eviction_twins.json")
    ap.add_argument("--summary", type=Path, default=ROOT / "bench" / "results" / "twin_replay_summary.json")
    ap.add_argument(
        "--entropy",
        type=Path,
        default=ROOT / "bench" / "results" / "expert_entropy.json",
        help="bench/expert_entropy.py's record: the trained experts' Huffman-coded size ratio (if present)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    coded = None
    if args.entropy.exists():
        coded = json.loads(args.entropy.read_text())["rows"][0]["groups"]["all"]["ratio_huffman"]
    rows = ceilings(json.loads(args.eviction.read_text()), json.loads(args.summary.read_text()), coded)
    if not rows:
        raise SystemExit(f"{args.eviction}: no twin with an engine-measured `none` at 50% or 25%")
    command = "python bench/target_ceiling.py" + (" " + " ".join(argv) if argv else "")
    args.out.mkdir(parents=True, exist_ok=True)
    sources = [args.eviction.name, args.summary.name] + ([args.entropy.name] if coded is not None else [])
    doc = {"kind": "target_ceiling", "command": command, "sources": sources, "rows": rows}
    (args.out / "target_ceiling.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "target_ceiling.md").write_text(markdown(rows, command))
    plot(rows, args.out / "target_ceiling.png")
    for r in rows:
        print(
            f"{r['twin']} @ {100 * r['cache_fraction']:.0f}%: ceilings LRU {r['lru_ceiling']:.2f}, LFU "
            f"{r['lfu_ceiling']:.2f}, Belady {r['belady_ceiling']:.2f} (target {r['target']:g}); budget "
            f"{r['allowed_mb_per_token']:.0f} MB/token = {r['shrink_vs_lfu']:.2f} of LFU's"
        )


if __name__ == "__main__":
    main()
