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
