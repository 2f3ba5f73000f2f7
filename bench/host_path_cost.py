"""The host's bookkeeping per layer-step of a segmented decode step, on a twin's routing (issue #17, CPU).

A segmented step returns to the host at every MoE layer, and the GPU profile of the Qwen3 twin says the copy
engine mostly waits for the host to issue the next copy (`bench/trace_gaps.py`). This times the part of
that host work that is the expert cache's own Python: for every layer of every token, what the replayer
does (`engine.runner.graphs.GraphReplayer`): score the routing (`account_routing`), acquire the routed
experts (`acquire`, a miss's copy), send the slot-table row, prefetch the next layer's experts (the oracle's
ids: `prefetch`), release. The cache is a CPU one over experts of 16 weights, so the copies are nearly
free and what is left is the bookkeeping (eviction order, pins, slot table, counters). Median of `--reps`
of the mean microseconds per layer-step, and a cProfile of one pass (the top functions by own time).

    python bench/host_path_cost.py --out bench/results          # -> host_path_cost.json, ~1 minute

Imports numpy, torch and `engine.experts` only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.experts.cache import ExpertCache  # noqa: E402
from engine.experts.eviction import build_eviction  # noqa: E402
from engine.experts.store import ExpertLayout, ExpertStore  # noqa: E402

TWIN = ROOT / "bench/twins/twin_replay_qwen3-30b-a3b.npz"


def build(routed: np.ndarray, experts: int, fraction: float, eviction: str) -> ExpertCache:
    layers = routed.shape[0]
    layout = ExpertLayout.from_shapes({"w": (16,)}, torch.bfloat16, experts)
    store = ExpertStore(layout, layers, pin=False)
    for layer in range(layers):
        store.allocate(layer).zero_()
    slots = max(routed.shape[2], round(fraction * layers * experts))
    return ExpertCache(store, slots, torch.device("cpu"), eviction=build_eviction(eviction, layers))


def token(cache: ExpertCache, routed: np.ndarray, t: int) -> None:
    """One decode token's host bookkeeping, layer by layer, as a segmented step with `oracle+1` does it."""
    layers = routed.shape[0]
    for layer in range(layers):
        experts = sorted({int(e) for e in routed[layer, t]})
        cache.account_routing(layer, experts)
        acq = cache.acquire(layer, experts)
        cache.sync_slot_table(layer)
        if layer + 1 < layers:
            cache.prefetch(layer + 1, [int(e) for e in routed[layer + 1, t]])
        cache.release(acq)


def measure(twin: Path, fraction: float, eviction: str, tokens: int, warm: int, reps: int) -> dict:
    z = np.load(twin)
    routed = z["routed_ids"]  # [L, T, k]
    experts = int(routed.max()) + 1
    cache = build(routed, experts, fraction, eviction)
    t = 0
    for _ in range(warm):
        token(cache, routed, t % routed.shape[1])
        t += 1
    us = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(tokens):
            token(cache, routed, t % routed.shape[1])
            t += 1
        us.append(1e6 * (time.perf_counter() - t0) / (tokens * routed.shape[0]))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(tokens):
        token(cache, routed, t % routed.shape[1])
        t += 1
    prof.disable()
    stats = pstats.Stats(prof)
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[
        :12
    ]  # (file, line, fn) -> (cc, nc, tt, ct, ..)
    c = cache.counters
    return {
        "twin": twin.name,
        "layers": routed.shape[0],
        "experts": experts,
        "fraction": fraction,
        "slots": cache.capacity,
        "eviction": eviction,
        "tokens_per_rep": tokens,
        "us_per_layer_median": round(statistics.median(us), 1),
        "us_per_layer": [round(u, 1) for u in us],
        "copies_per_token": round((sum(c.misses) + sum(c.prefetch_issued)) / t, 1),
        "profile_top_own_time": [
            {"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_s": round(tt, 3)}
            for (f, line, fn), (_, nc, tt, _ct, _) in top
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twin", type=Path, default=TWIN)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--eviction", default="lfu")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    res = measure(args.twin, args.fraction, args.eviction, args.tokens, args.warm, args.reps)
    res["command"] = "python " + " ".join(sys.argv)
    print(json.dumps({k: v for k, v in res.items() if k != "profile_top_own_time"}))
    for row in res["profile_top_own_time"][:6]:
        print(f"  {row['own_s']:7.3f} s  {row['calls']:8d}  {row['function']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_path_cost.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
