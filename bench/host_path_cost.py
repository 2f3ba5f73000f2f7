"""The host's bookkeeping per layer-step of a segmented decode step, on a twin's routing (issue #17).

A segmented step returns to the host at every MoE layer, and the GPU profile of the Qwen3 twin says the copy
engine mostly waits for the host to issue the next copy (`bench/trace_gaps.py`). This times the part of
that host work that is the expert cache's own Python: for every layer of every token, what the replayer
does (`engine.runner.graphs.GraphReplayer`): score the routing (`account_routing`), acquire the routed
experts (`acquire`, a miss's copy), send the slot-table row, prefetch the next layer's experts (the oracle's
ids: `prefetch`), release. The cache is over experts of 16 weights, so the copies are nearly free: on the
CPU (the default) what is left is the bookkeeping (eviction order, pins, slot table, counters); with
`--device cuda` the cache's CUDA calls too (each copy's launch, its event, the stream waits, the stall
timer's events, the table row's upload): the part of a segmented step's `route` phase (119 µs a layer on
the H200 for `none`, docs/performance.md) that a CPU run cannot see. Median of `--reps` of the mean
microseconds per layer-step, and a cProfile of one pass (the top functions by own time).

    python bench/host_path_cost.py --out bench/results          # -> host_path_cost.json, ~1 minute
    python bench/host_path_cost.py --policies none,oracle+1,exact+1,exact+2 --out bench/results
                                                                # -> host_path_policies.json, each policy
    python bench/host_path_cost.py --device cuda --policies none,exact+2 --out bench/results   # on a GPU
                                                                # -> host_path_policies_cuda.json

`--policies` times `none` (no prefetch), `oracle+d` (the routed set of layer i + d issued at layer i's
tap) and `exact+d` (the artefact's trained bank of distance d, its top-k), in the replayer's order (the
previous layer released, the tap's prefetch, then this layer's routing), one after another in one process,
so their ratios compare on one CPU: what a prediction's bookkeeping adds (its copies, wrong guesses'
victims and unpins) beside the reads and launches the GPU path adds on top.

Imports numpy, torch, `engine.experts`, `bench.twin_replay` (the bank names) and `bench.policy_names` only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import twin_replay  # noqa: E402
from bench.policy_names import split_policy  # noqa: E402
from engine.experts.cache import ExpertCache  # noqa: E402
from engine.experts.eviction import build_eviction  # noqa: E402
from engine.experts.store import ExpertLayout, ExpertStore  # noqa: E402

TWIN = ROOT / "bench/twins/twin_replay_qwen3-30b-a3b.npz"


def build(
    routed: np.ndarray, experts: int, fraction: float, eviction: str, device: str = "cpu"
) -> ExpertCache:
    """A cache over experts of 16 weights on `device`: on CUDA from a page-locked store, so every copy,
    event and stream wait the engine's cache makes is a real CUDA call (and the copies themselves take
    next to nothing)."""
    layers = routed.shape[0]
    layout = ExpertLayout.from_shapes({"w": (16,)}, torch.bfloat16, experts)
    store = ExpertStore(layout, layers, pin=device == "cuda")
    for layer in range(layers):
        store.allocate(layer).zero_()
    slots = max(routed.shape[2], round(fraction * layers * experts))
    return ExpertCache(store, slots, torch.device(device), eviction=build_eviction(eviction, layers))


def prefetches(z, policy: str) -> tuple[int, np.ndarray | None]:
    """(distance d, ids [L-d, N, m] issued at layer i's tap for layer i + d) of `policy`: `none` (no
    prefetch), `oracle+d` (the routed set of layer i + d), `exact+d` (the artefact's trained bank of
    distance d, its top-k; d = 0: the same-layer predictors)."""
    routed = z["routed_ids"]
    name, d = split_policy(policy)
    if name == "none":
        return 0, None
    if name == "oracle":
        return d, routed[d:]
    if name == "exact":
        bank = z["predicted_ids"] if d == 0 else z[twin_replay.ahead_key(d)]
        return d, bank[:, :, : routed.shape[2]]
    raise SystemExit(f"policy {policy!r}: none, oracle+d or exact+d")


def token(
    cache: ExpertCache, routed: np.ndarray, t: int, d: int = 1, ahead: np.ndarray | None = None
) -> None:
    """One decode token's host bookkeeping, layer by layer, in the replayer's order: the previous layer's
    experts released (their segment is launched), the tap's prediction for layer i + d issued (`ahead[i]`,
    best first; None: no prefetch), then layer i's routing scored and acquired and its slot-table row sent."""
    layers = routed.shape[0]
    held = None
    for layer in range(layers):
        if held is not None:
            cache.release(held)
        if ahead is not None and layer + d < layers:
            cache.prefetch(layer + d, [int(e) for e in ahead[layer, t]])
        experts = sorted({int(e) for e in routed[layer, t]})
        cache.account_routing(layer, experts)
        held = cache.acquire(layer, experts)
        cache.sync_slot_table(layer)
    cache.release(held)
    if cache.cuda:  # what the runner does after a step: read back the stall timings that completed
        cache.flush_stalls()


def measure(
    twin: Path,
    fraction: float,
    eviction: str,
    tokens: int,
    warm: int,
    reps: int,
    policy: str = "oracle+1",
    device: str = "cpu",
) -> dict:
    z = np.load(twin)
    routed = z["routed_ids"]  # [L, T, k]
    d, ahead = prefetches(z, policy)
    experts = int(routed.max()) + 1
    cache = build(routed, experts, fraction, eviction, device)
    t = 0
    for _ in range(warm):
        token(cache, routed, t % routed.shape[1], d, ahead)
        t += 1
    us = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(tokens):
            token(cache, routed, t % routed.shape[1], d, ahead)
            t += 1
        us.append(1e6 * (time.perf_counter() - t0) / (tokens * routed.shape[0]))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(tokens):
        token(cache, routed, t % routed.shape[1], d, ahead)
        t += 1
    prof.disable()
    stats = pstats.Stats(prof)
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[
        :12
    ]  # (file, line, fn) -> (cc, nc, tt, ct, ..)
    c = cache.counters
    return {
        "twin": twin.name,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "layers": routed.shape[0],
        "experts": experts,
        "fraction": fraction,
        "slots": cache.capacity,
        "eviction": eviction,
        "policy": policy,
        "tokens_per_rep": tokens,
        "us_per_layer_median": round(statistics.median(us), 1),
        "us_per_layer": [round(u, 1) for u in us],
        "copies_per_token": round((sum(c.misses) + sum(c.prefetch_issued)) / t, 1),
        "prefetch_wasted_per_token": round(sum(c.prefetch_wasted) / t, 1),
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
    ap.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cuda: the cache on the GPU, copies from page-locked memory: its CUDA calls are timed too "
        "(writes host_path_*_cuda.json)",
    )
    ap.add_argument(
        "--policies",
        default=None,
        help="e.g. none,oracle+1,exact+2: each in turn in this process, to host_path_policies.json",
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    suffix = "_cuda" if args.device == "cuda" else ""
    if args.policies:
        rows = []
        for policy in args.policies.split(","):
            r = measure(
                args.twin,
                args.fraction,
                args.eviction,
                args.tokens,
                args.warm,
                args.reps,
                policy,
                args.device,
            )
            print(f"{policy}: {r['us_per_layer_median']} us a layer {r['us_per_layer']}, "
                  f"{r['copies_per_token']} copies and {r['prefetch_wasted_per_token']} wasted a token")  # fmt: skip
            rows.append(r)
        base = next((r["us_per_layer_median"] for r in rows if r["policy"] == "none"), None)
        for r in rows:
            r["ratio_to_none"] = round(r["us_per_layer_median"] / base, 3) if base else None
        doc = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
               "rows": rows}  # fmt: skip
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"host_path_policies{suffix}.json").write_text(json.dumps(doc, indent=1) + "\n")
        return
    res = measure(
        args.twin, args.fraction, args.eviction, args.tokens, args.warm, args.reps, device=args.device
    )
    res["command"] = "python " + " ".join(sys.argv)
    print(json.dumps({k: v for k, v in res.items() if k != "profile_top_own_time"}))
    for row in res["profile_top_own_time"][:6]:
        print(f"  {row['own_s']:7.3f} s  {row['calls']:8d}  {row['function']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"host_path_cost{suffix}.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
