"""The soak's outputs besides the JSON: the stdout table rows and the PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

HEADER = (
    f"{'configuration':<28} {'conc':>4} {'req':>4} {'tok/s':>8} {'ttft50':>7} {'ttft99':>7} {'itl50':>7} "
    f"{'itl99':>7} {'err':>4} {'greedy':>7} {'hit':>5} {'rss MB':>8} {'gpu MB':>8} metrics"
)


def _f(x, width: int, fmt: str = ".3f") -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{fmt}}"


def table_row(rec: dict) -> str:
    greedy = f"{rec['greedy_equal']}/{rec['greedy_compared']}" if rec["greedy_compared"] else "-"
    lat = " ".join(_f(rec[k], 7) for k in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99"))
    mem = f"{_f(rec['rss_mb_end'], 8, '.0f')} {_f(rec['gpu_mb_end'], 8, '.0f')}"
    return (
        f"{rec['configuration']:<28} {rec['concurrency']:>4} {rec['requests']:>4} "
        f"{_f(rec['tok_s'], 8, '.1f')} "
        f"{lat} {rec['errors']:>4} {greedy:>7} {_f(rec.get('hit_rate'), 5, '.2f')} {mem} "
        f"{'ok' if rec['metrics_consistent'] else 'INCONSISTENT'}"
    )


def plot(records: list[dict], title: str, path: Path) -> Path | None:
    """Throughput and p99 inter-token latency against concurrency: one line per cache size for policy
    `none` with streamed steps, every other configuration as dashed markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r for r in records if r.get("record") == "level" and r.get("tok_s") is not None]
    if not levels:
        return None
    groups: dict[str, list[dict]] = {}
    for r in levels:
        groups.setdefault(r["configuration"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["concurrency"])
        main = rows[0]["policy"] == "none" and rows[0]["steps"] == "streamed"
        style = dict(marker="o", linestyle="-") if main else dict(marker="x", linestyle="--", alpha=0.7)
        xs = [r["concurrency"] for r in rows]
        axes[0].plot(xs, [r["tok_s"] for r in rows], label=name, **style)
        itl = [(r["concurrency"], r["itl_p99"]) for r in rows if r["itl_p99"] is not None]
        if itl:
            axes[1].plot([x for x, _ in itl], [1e3 * y for _, y in itl], label=name, **style)
    axes[0].set_ylabel("aggregate output tokens/s")
    axes[1].set_ylabel("p99 inter-token latency (ms)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (MOE_MAX_RUNNING=8: more wait)")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RUN_KEYS = ("command", "plan", "not_started", "summary", "timings", "checkpoint")


def merge(old: dict, new: dict) -> dict:
    """One soak JSON from two runs on the same checkpoint spec (device calls are at most 10 minutes):
    records concatenated, each run's command, plan, summary and checkpoint kept under `runs`, and
    `not_started` recomputed as the configurations planned in any run that no run recorded."""
    if (old["shape"], old["dtype"], old["routing"]) != (new["shape"], new["dtype"], new["routing"]):
        raise SystemExit("merge: different shape, dtype or routing")
    runs = old.get("runs") or [{k: old.get(k) for k in RUN_KEYS}]
    out = dict(old)
    out["runs"] = [*runs, {k: new.get(k) for k in RUN_KEYS}]
    out["records"] = old["records"] + new["records"]
    out["plan"] = old["plan"] + [p for p in new["plan"] if p not in old["plan"]]
    done = {r["configuration"] for r in out["records"] if r.get("record") == "level"}
    out["not_started"] = [p["name"] for p in out["plan"] if p["name"] not in done]
    out["command"] = [r["command"] for r in out["runs"]]
    configs = sum(r["summary"]["configurations"] for r in out["runs"] if r.get("summary"))
    errors = sum(r["summary"]["errors"] for r in out["runs"] if r.get("summary"))
    out["summary"] = {"configurations": configs, "errors": errors, "png": None,
                      "wall_s": round(sum(r["summary"]["wall_s"] for r in out["runs"] if r.get("summary")), 1),
                      "note": f"{len(out['runs'])} device calls on the same checkpoint spec (rebuilt from the same seed)"}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m bench.soak_report merge OLD.json NEW.json  (writes OLD.json and re-plots OLD.png)"""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="merge the JSON of a second soak run into the first")
    ap.add_argument("what", choices=("merge",))
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    out = merge(json.loads(args.old.read_text()), json.loads(args.new.read_text()))
    png = plot(out["records"], f"serve soak, {out['shape']} shape, {out['dtype']}, {out.get('gpu')}",
               args.old.with_suffix(".png"))  # fmt: skip
    out["summary"]["png"] = png.name if png else None
    args.old.write_text(json.dumps(out, indent=1, default=str))
    print(f"{args.old}: {out['summary']}; not started: {out['not_started']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
