"""Would streamed steps pay if their fills were admitted by frequency? (issue #17, "Next" 5, in a model first.)

A streamed decode step (one CUDA graph, no host work inside it) reads a missed expert from host memory
in the expert kernels, and the host then copies ("fills") it into a slot behind the step, so a miss
crosses PCIe twice; on the twins the runner therefore picks segmented steps whenever it offloads. This
replays a twin's routing through a model of the engine's streamed protocol (`engine.experts.streamed`,
`ExpertCache.stream_account` / `stream_queue` / `stream_publish`), one batch-1 streamed step per token,
the cache cold at the start:

- a routed expert resident with its copy landed is a hit; any other is a miss, read from host memory,
  counted as a use by the eviction order, and queued for a fill (unless resident, landing or queued);
- the host reads step t's logs while step t+1 runs and publishes before step t+2: the queued fills get
  slots (evicting the order's victim) and start, at most `--inflight-mb` of them (the engine's
  `STREAM_INFLIGHT_BYTES`, 512 MB; a copy that size takes ~10 ms, under a step, so the previous
  publish's copies have landed), and are read from their slots from step t+3 on; the rest are dropped
  (a later miss queues them again);
- admission `always` is the engine's; `frequency` gives a queued expert the victim's slot only if its
  decayed routed-use count (the LFU's, half-life 64 tokens) exceeds the victim's, else drops the fill
  (a TinyLFU-style admission: a cold expert read once does not evict a warm one).

Orders are the engine's own (`engine.experts.eviction`: `lru`, `lfu`). Time per token is modelled as the
resident step + (host reads + fills) / bandwidth, the way the one measured offloaded streamed run moved
its bytes (DeepSeek-V2-Lite shape at 50%, random routing: 1.3 GB of reads and 0.28 GB of fills a token
at 51 GB/s together, docs/performance.md); `--read-gbs` sets that bandwidth. Segmented steps are the
simulator's `none` rows of the same twin, order and cache (`eviction_twins.json`: its bytes a token)
moved at the rate the engine's measured LRU `none` of that cache moved them (its time over the resident
step), so each kind of step carries what its measured runs spent beside the copies.

    python bench/streamed_fills.py --fractions 0.75,0.5,0.25 --out bench/results   # both twins, 35 s

Writes `<out>/streamed_fills.{json,md}`. Imports numpy, `bench.twin_replay`, `engine.experts.eviction` and `predictors.sim_inputs` (the expert's size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import twin_replay  # noqa: E402
from engine.experts.eviction import DEFAULT_LFU_HALF_LIFE, LFU, build_eviction  # noqa: E402
from predictors.sim_inputs import model_shape  # noqa: E402

TWINS = ("twin_replay_qwen3-30b-a3b.json", "twin_replay_deepseek-v2-lite.json")
ADMISSIONS = ("always", "frequency")  # of `replay`; `frozen` (never fill, `frozen`) is the third row kind
LANDS_AFTER = 3  # a miss of step t is read from its slot from step t + 3 on (engine.runner.graphs)


def replay(
    routed: np.ndarray,
    num_experts: int,
    slots: int,
    order: str,
    admission: str,
    fill_budget: int,
    half_life: float = DEFAULT_LFU_HALF_LIFE,
) -> dict:
    """Counts of streamed steps over `routed` [L, N, k]: requests, hits, host reads and fills."""
    if admission not in ADMISSIONS:
        raise ValueError(f"admission {admission!r}: one of {', '.join(ADMISSIONS)}")
    nl, n, _ = routed.shape
    evict = build_eviction(order, nl, half_life)
    counts = LFU(half_life * nl)  # the frequency admission's counts: every routed use, resident or not
    visible: dict[tuple[int, int], int] = {}  # resident -> the first step that reads it from its slot
    queued: dict[tuple[int, int], None] = {}
    requests = hits = fills = dropped = 0
    now = -1
    for t in range(n):
        for layer in range(nl):
            now += 1
            for e in sorted(set(routed[layer, t].tolist())):
                key = (layer, e)
                requests += 1
                counts.use(key, now)
                at = visible.get(key)
                if at is not None and at <= t:
                    hits += 1
                    evict.touch(key, now, routed=True)
                    continue
                if at is not None:  # landing: read from host memory, its fill already under way
                    evict.touch(key, now, routed=True)
                else:
                    evict.use(key, now)
                    queued.setdefault(key, None)
        # the publish before step t + 2 (this step's logs were read while t + 1 ran)
        started = 0
        for key in queued:
            if started >= fill_budget:
                dropped += 1
                continue
            if len(visible) >= slots:
                victim = evict.victim(lambda _k: False)  # streamed steps pin nothing between steps
                if admission == "frequency" and counts.count(victim) >= counts.count(key):
                    dropped += 1
                    continue
                evict.remove(victim)
                del visible[victim]
            visible[key] = t + LANDS_AFTER
            evict.insert(key, now)
            started += 1
        fills += started
        queued.clear()
    return {"requests": requests, "hits": hits, "reads": requests - hits, "fills": fills, "dropped": dropped}


def frozen(routed: np.ndarray, offsets: np.ndarray, num_experts: int, slots: int) -> dict:
    """Streamed steps that never fill: the cache holds, for each half of the prompts, the `slots` experts
    the other half routed most (two folds, every token replayed once), and every other expert is read from
    host memory. The bound of admitting nothing."""
    nl, n, _ = routed.shape
    used = np.zeros((nl, n, num_experts), dtype=bool)  # [L, N, E]
    for layer in range(nl):
        used[layer, np.arange(n)[:, None], routed[layer]] = True
    half = int(offsets[np.searchsorted(offsets, n, side="right") // 2]) if len(offsets) > 2 else n // 2
    requests = hits = 0
    for fit, run in ((slice(half, n), slice(0, half)), (slice(0, half), slice(half, n))):
        top = np.argsort(-used[:, fit].sum(axis=1).ravel(), kind="stable")[:slots]  # [slots] of L * E
        held = np.zeros(nl * num_experts, dtype=bool)
        held[top] = True
        u = used[:, run]  # [L, n', E]
        requests += int(u.sum())
        hits += int((u & held.reshape(nl, 1, num_experts)).sum())
    return {"requests": requests, "hits": hits, "reads": requests - hits, "fills": 0, "dropped": 0}


def reuse(routed: np.ndarray, num_experts: int, offsets: np.ndarray, gaps=(1, 2, 4, 8)) -> dict:
    """P(an expert routed at a layer's token t is routed there at t + g), within each prompt, for each gap,
    and the base rate (k / E): how much a token's routing says about the next ones'."""
    nl, n, k = routed.shape
    used = np.zeros((nl, n, num_experts), dtype=bool)
    for layer in range(nl):
        used[layer, np.arange(n)[:, None], routed[layer]] = True
    prompt = np.searchsorted(offsets, np.arange(n), side="right")  # [N]: each token's prompt
    out = {"base": k / num_experts}
    for g in gaps:
        same = prompt[:-g] == prompt[g:]  # [N - g]: t and t + g in one prompt
        a, b = used[:, :-g][:, same], used[:, g:][:, same]
        out[str(g)] = float((a & b).sum() / a.sum())
    return out


def _one(args: tuple) -> dict:
    path, fraction, order, admission, budget_mb, max_tokens = args
    manifest, a = twin_replay.load(Path(path))
    routed = a["routed_ids"][:, :max_tokens].astype(np.int32)
    nl, n, _ = routed.shape
    e = twin_replay.routed_experts(manifest["twin_config"])
    expert_bytes = model_shape(manifest["shape"].removeprefix("twin_replay_")).expert_bytes
    slots = max(routed.shape[2], round(fraction * nl * e))
    t0 = time.perf_counter()
    if admission == "frozen":
        c = frozen(routed, a["offsets"], e, slots)
    else:
        c = replay(routed, e, slots, order, admission, max(1, int(budget_mb * 2**20 // expert_bytes)))
    return {"twin": manifest["shape"].removeprefix("twin_replay_"), "fraction": fraction, "slots": slots, "eviction": order,
            "admission": admission, "tokens": n, "seconds": round(time.perf_counter() - t0, 1), **c}  # fmt: skip


def segmented(eviction_doc: dict) -> dict:
    """(twin, fraction, eviction) -> the simulator's `none` row: hit rate, bytes, serial ms, engine tok/s."""
    out = {}
    for t in eviction_doc["twins"]:
        for r in t["rows"]:
            if r["policy"] == "none" and r["eviction"] in ("lru", "lfu"):
                out[(t["twin"], round(r["fraction"], 3), r["eviction"])] = r | {"time_model": t["time_model"]}
    return out


def report(rows: list[dict], eviction_doc: dict, read_gbs: float) -> list[dict]:
    """Each streamed row with its bytes and modelled ms a token, against segmented `none` of its order and
    cache: the simulator's bytes at the rate the engine's measured LRU `none` moved them (its time over the
    resident step), so both kinds of step carry what their measured runs spent beside the copies."""
    seg = segmented(eviction_doc)
    bytes_of = {t["twin"]: t["expert_bytes"] for t in eviction_doc["twins"]}
    out = []
    for r in rows:
        frac = round(r["fraction"], 3)
        lru = seg.get((r["twin"], frac, "lru"))
        s = seg.get((r["twin"], frac, r["eviction"]), lru)  # a frozen cache: against LRU's
        xb, n = bytes_of[r["twin"]], r["tokens"]
        step_ms = s["time_model"]["step_ms"] if s else None
        reads_mb, fills_mb = r["reads"] * xb / n / 1e6, r["fills"] * xb / n / 1e6
        ms = step_ms + (reads_mb + fills_mb) / read_gbs if step_ms is not None else None
        seg_ms = rate = None
        if s and lru and lru.get("engine_tok_s") and 1e3 / lru["engine_tok_s"] > step_ms:
            rate = lru["bytes_per_token"] / 1e6 / (1e3 / lru["engine_tok_s"] - step_ms)  # MB/ms = GB/s
            seg_ms = step_ms + s["bytes_per_token"] / 1e6 / rate
        out.append(
            r
            | {
                "hit_rate": r["hits"] / r["requests"],
                "reads_mb_per_token": reads_mb,
                "fills_mb_per_token": fills_mb,
                "pcie_mb_per_token": reads_mb + fills_mb,
                "streamed_ms": ms,
                "segmented_hit_rate": s["hit_rate"] if s else None,
                "segmented_mb_per_token": s["bytes_per_token"] / 1e6 if s else None,
                "segmented_gbs_engine": rate,
                "segmented_ms": seg_ms,
                "streamed_over_segmented": ms / seg_ms if ms and seg_ms else None,
            }
        )
    return out


def markdown(rows: list[dict], command: str, read_gbs: float, reuses: dict | None = None) -> str:
    lines = [
        "# Streamed steps with fills admitted by frequency (modelled, twin-replayed routing)",
        "",
        f"`{command}`",
        "",
        "Every token of the artefact's 64 prompts as a batch-1 streamed step, the cache cold at the start"
        " (`bench/streamed_fills.py` says what is modelled). `reads` = experts the kernels read from host"
        " memory, `fills` = copies behind the steps; streamed ms = resident step + (reads + fills) /"
        f" {read_gbs:g} GB/s, the rate of the one measured offloaded streamed run. Segmented = the simulator's"
        " `none` of the same order and cache (`eviction_twins.json`), its bytes at the rate the engine's"
        " measured LRU `none` of that cache moved them (GB/s column; a frozen cache against LRU's)."
        " Ratio < 1: streamed would be faster. `frozen`: never filled, holding the experts the other half of"
        " the prompts routed most.",
        "",
        "| twin | cache | eviction | admission | hit | reads MB/tok | fills MB/tok | streamed ms | segmented: hit · MB/tok · GB/s · ms | streamed / segmented |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["twin"], -r["fraction"], r["eviction"], r["admission"])):
        seg = (
            f"{r['segmented_hit_rate']:.1%} · {r['segmented_mb_per_token']:.0f} · {r['segmented_gbs_engine']:.1f}"
            f" · {r['segmented_ms']:.1f}"
            if r["segmented_ms"] is not None
            else "-"
        )
        ratio = f"{r['streamed_over_segmented']:.2f}" if r["streamed_over_segmented"] else "-"
        ms = f"{r['streamed_ms']:.1f}" if r["streamed_ms"] is not None else "-"
        lines.append(
            f"| {r['twin']} | {r['fraction']:.0%} | {r['eviction']} | {r['admission']} | {r['hit_rate']:.1%} |"
            f" {r['reads_mb_per_token']:.0f} | {r['fills_mb_per_token']:.0f} | {ms} | {seg} | {ratio} |"
        )
    for twin, r in (reuses or {}).items():
        gaps = ", ".join(f"{g} later {p:.3f}" for g, p in r.items() if g != "base")
        lines.append(
            f"\n{twin}: an expert routed at a layer's token is routed there again {gaps}; base rate {r['base']:.3f}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twins", type=Path, nargs="*", default=[ROOT / "bench/twins" / t for t in TWINS])
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--orders", default="lru,lfu")
    ap.add_argument("--admissions", default=",".join(ADMISSIONS))
    ap.add_argument("--inflight-mb", type=float, default=512.0)
    ap.add_argument("--read-gbs", type=float, default=51.0)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--no-frozen", action="store_true", help="leave out the never-filled frozen cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    jobs = [
        (str(p), float(f), o, a, args.inflight_mb, args.max_tokens)
        for p in args.twins
        for f in args.fractions.split(",")
        for o in args.orders.split(",")
        for a in args.admissions.split(",")
    ]
    if not args.no_frozen:
        jobs += [
            (str(p), float(f), "frozen", "frozen", 0.0, args.max_tokens)
            for p in args.twins
            for f in args.fractions.split(",")
        ]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = []
        for i, r in enumerate(pool.map(_one, jobs), 1):
            print(f"[{i}/{len(jobs)}] {r['twin']} {r['fraction']:.0%} {r['eviction']} {r['admission']}: "
                  f"hit {r['hits'] / r['requests']:.1%} in {r['seconds']} s", flush=True)  # fmt: skip
            rows.append(r)
    doc = json.loads((ROOT / "bench/results/eviction_twins.json").read_text())
    rows = report(rows, doc, args.read_gbs)
    reuses = {}
    for p in args.twins:
        manifest, a = twin_replay.load(p)
        routed = a["routed_ids"][:, : args.max_tokens].astype(np.int32)
        reuses[manifest["shape"].removeprefix("twin_replay_")] = reuse(
            routed, twin_replay.routed_experts(manifest["twin_config"]), a["offsets"]
        )
    command = "python bench/streamed_fills.py " + " ".join(sys.argv[1:])
    md = markdown(rows, command.strip(), args.read_gbs, reuses)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"routing": "twin-replayed", "read_gbs": args.read_gbs, "inflight_mb": args.inflight_mb,
                "command": command.strip(), "reuse": reuses, "rows": rows}  # fmt: skip
        (args.out / "streamed_fills.json").write_text(json.dumps(meta, indent=1) + "\n")
        (args.out / "streamed_fills.md").write_text(md)


if __name__ == "__main__":
    main()
