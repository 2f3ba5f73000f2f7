"""The `simulate` command's work: the sweep over cache sizes x evictions x
policies (with a progress bar), the capacity answer, and the outputs (table, simulate.json, simulate.png).

Library code: no argument parsing, no printing (the CLI prints what these functions return).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from predictors.sim_policies import PolicyRun
from predictors.sim_timeline import Clock, Timeline
from predictors.simulate import CacheSize, TimeModel, Workload, replay, smallest_cache, summarize


@dataclass(frozen=True)
class SweepConfig:
    evictions: tuple[str, ...] = ("lru", "lfu", "belady")
    lfu_half_life: float = 64.0
    time: TimeModel = TimeModel()
    target_hit: float | None = None
    target_metric: str = "resident_hit_rate"  # or "hit_rate" (the engine's: resident + prefetched)
    progress: bool = True


def _row(w: Workload, size: CacheSize, eviction: str, run: PolicyRun, s: dict, eb: int | None) -> dict:
    return {
        "slots": size.slots,
        "fraction": size.slots / w.total_experts,
        "gigabytes": size.slots * eb / 1e9 if eb else None,
        "asked": size.asked,
        "eviction": eviction,
        "policy": run.label,
        **s,
    }


def sweep(
    w: Workload, sizes: list[CacheSize], runs: list[PolicyRun], expert_bytes: int | None, cfg: SweepConfig
) -> dict:
    """Every size x eviction x policy, then (with a target) the smallest cache whose `cfg.target_metric`
    reaches it for each eviction x policy, bisecting on slots. Returns the document written as
    simulate.json. The default metric is the resident hit rate: a prefetch hit at a cache of k slots is a
    copy made just before the layer needs it, which the engine's hit counter credits but memory does not."""
    rows: list[dict] = []
    capacity: list[dict] = []
    bar = Progress(
        TextColumn("simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeRemainingColumn(),
        disable=not cfg.progress,
    )
    combos = [(e, r) for e in cfg.evictions for r in runs]
    with bar:
        task = bar.add_task("simulate", total=w.steps * len(sizes) * len(combos))

        def hit_at(slots: int, eviction: str, run: PolicyRun, timed: bool = False) -> dict:
            clock = None
            if timed and expert_bytes:
                tm = cfg.time
                tl = Timeline(
                    tm.step_ms, tm.bandwidth_gbs, tm.decision_ms, tm.attention_share, tm.host_expert_ms
                )
                clock = Clock(w.num_layers, expert_bytes, tl, w.top_k)
            counters = replay(
                w,
                slots,
                eviction,
                run,
                lfu_half_life=cfg.lfu_half_life,
                on_steps=lambda n: bar.advance(task, n),
                events=clock,
            )
            s = summarize(counters, w.steps, expert_bytes, cfg.time)
            return s | ({"clock_ms": clock.ms(w.steps)} if clock is not None else {})

        for eviction, run in combos:
            known: dict[int, float] = {}
            for size in sizes:
                s = hit_at(size.slots, eviction, run, timed=True)
                known[size.slots] = s[cfg.target_metric]
                rows.append(_row(w, size, eviction, run, s, expert_bytes))
            if cfg.target_hit is not None:

                def probe(slots: int, eviction=eviction, run=run) -> float:
                    bar.update(task, total=bar.tasks[0].total + w.steps)
                    return hit_at(slots, eviction, run)[cfg.target_metric]

                found = smallest_cache(probe, known, cfg.target_hit, w.top_k, w.total_experts)
                capacity.append(_capacity(w, eviction, run, found, expert_bytes))
    return {
        "source": w.source,
        "kind": w.kind,
        "fingerprint": w.fingerprint,
        "num_moe_layers": w.num_layers,
        "num_experts": w.num_experts,
        "top_k": w.top_k,
        "total_experts": w.total_experts,
        "steps": w.steps,
        "streams": w.streams,
        "expert_bytes": expert_bytes,
        "time_model": {
            **asdict(cfg.time),
            "overlap_ms": "max(step_ms, bytes_per_token / bandwidth): every copy hidden behind compute",
            "serial_ms": "step_ms + misses_per_token * expert_bytes / bandwidth: prefetches hidden, misses stall",
            "clock_ms": "per-layer clock of segmented steps (predictors.sim_timeline): one copy engine, decision_ms "
            "of host work at each segment boundary, attention_share of each layer before its experts; with "
            "host_expert_ms > 0 the host computes part of each layer's demand misses (hybrid misses)",
        },
        "lfu_half_life_tokens": cfg.lfu_half_life,
        "policies": {r.label: {"policy": r.name, **r.params} for r in runs},
        "results": rows,
        "target_hit": cfg.target_hit,
        "target_metric": cfg.target_metric,
        "capacity": capacity,
    }


def _fraction_setting(slots: int, total: int) -> float:
    """The shortest MOE_EXPERT_CACHE_FRACTION the engine turns back into `slots` (round(f * total))."""
    for digits in range(2, 9):
        f = round(slots / total, digits)
        if round(f * total) == slots:
            return f
    return slots / total


def _capacity(w: Workload, eviction: str, run: PolicyRun, found, eb: int | None) -> dict:
    out = {
        "eviction": eviction,
        "policy": run.label,
        "slots": None,
        "fraction": None,
        "gigabytes": None,
        "reached": None,  # the target metric's value at `slots`
        "moe_expert_cache_fraction": None,
        "moe_expert_cache_gb": None,
    }
    if found is not None:
        slots, hit = found
        out.update(slots=slots, fraction=slots / w.total_experts, reached=hit)
        out["moe_expert_cache_fraction"] = _fraction_setting(slots, w.total_experts)
        if eb:
            out["gigabytes"] = slots * eb / 1e9
            out["moe_expert_cache_gb"] = math.ceil(slots * eb / 1e7) / 100  # 0.01 GB steps: >= slots
    return out


# ----------------------------------------------------------------------------- outputs
def result_table(doc: dict) -> Table:
    """One row per cache size x eviction x policy. hit % = resident + prefetched hits (the engine's
    moe_expert_hits_total / requests); res % = resident hits only (held before the step's prefetch)."""
    timed = doc["expert_bytes"] is not None
    t = Table(
        title=f"simulate: {doc['steps']} steps of {doc['source']}, {doc['num_moe_layers']} MoE layers x "
        f"{doc['num_experts']} experts, top-{doc['top_k']}"
    )
    cols = ["slots", "cache %", "GB", "evict", "policy", "hit %", "res %", "miss/tok", "pf/tok", "waste %"]
    cols += ["MB/tok", "overlap ms", "serial ms", "clock ms"] if timed else []
    for col in cols:
        t.add_column(col, justify="left" if col in ("evict", "policy") else "right")
    for r in doc["results"]:
        cells = [
            str(r["slots"]),
            f"{100 * r['fraction']:.1f}",
            f"{r['gigabytes']:.2f}" if r["gigabytes"] is not None else "-",
            r["eviction"],
            r["policy"],
            f"{100 * r['hit_rate']:.1f}",
            f"{100 * r['resident_hit_rate']:.1f}",
            f"{r['misses_per_token']:.2f}",
            f"{r['prefetches_per_token']:.2f}",
            f"{100 * r['wasted_prefetch_share']:.1f}",
        ]
        if timed:
            cells += [f"{r['bytes_per_token'] / 1e6:.1f}", f"{r['overlap_ms']:.2f}", f"{r['serial_ms']:.2f}"]
            cells += [f"{r['clock_ms']:.2f}" if r.get("clock_ms") is not None else "-"]
        t.add_row(*cells)
    return t


def capacity_lines(doc: dict) -> list[str]:
    if doc["target_hit"] is None:
        return []
    goal = f"{100 * doc['target_hit']:g}%"
    what = "resident hits" if doc["target_metric"] == "resident_hit_rate" else "hits (resident + prefetched)"
    lines = [f"smallest cache reaching {goal} {what} (bisected on slots between the simulated sizes):"]
    for c in doc["capacity"]:
        who = f"  {c['eviction']:6} {c['policy']:24}"
        if c["slots"] is None:
            lines.append(f"{who} not reached even with every expert cached")
            continue
        gb = f", {c['gigabytes']:.3g} GB" if c["gigabytes"] else ""
        lines.append(
            f"{who} {c['slots']} slots = {100 * c['fraction']:.1f}% of the experts{gb}: "
            f"{100 * c['reached']:.1f}%  (MOE_EXPERT_CACHE_FRACTION={c['moe_expert_cache_fraction']:g}"
            + (f" or MOE_EXPERT_CACHE_GB={c['moe_expert_cache_gb']:.2f})" if c["gigabytes"] else ")")
        )
    return lines


def plot(doc: dict, path: str | Path) -> Path:
    """Hit rate (resident + prefetched) and resident hit rate against cache size (share of all experts),
    one line per eviction x policy."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    styles = {"lru": "-", "lfu": "--", "predicted": "-.", "belady": ":"}
    colors = {p: f"C{i}" for i, p in enumerate(doc["policies"])}
    panels = (("hit_rate", "hit rate (resident + prefetched)"), ("resident_hit_rate", "resident hit rate"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        series: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in doc["results"]:
            series.setdefault((r["eviction"], r["policy"]), []).append((r["fraction"], r[key]))
        for (eviction, policy), pts in series.items():
            pts.sort()
            ax.plot(
                *zip(*pts, strict=True),
                styles.get(eviction, "-"),
                marker="o",
                color=colors[policy],
                label=f"{policy} / {eviction}",
            )
        if doc["target_hit"] is not None and key == doc["target_metric"]:
            ax.axhline(doc["target_hit"], color="grey", lw=0.8)
        ax.set(xlabel="expert cache (share of all routed experts)", ylim=(0, 1.02), title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{doc['steps']} steps of {Path(doc['source']).name}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_outputs(doc: dict, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "simulate.json"
    js.write_text(json.dumps(doc, indent=2) + "\n")
    return js, plot(doc, out / "simulate.png")
