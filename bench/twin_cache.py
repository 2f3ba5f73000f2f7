"""Cold per-layer expert caches and reuse distances of a twin's routing (`bench/train_twin.py`, phase 3).

The published Qwen3-30B-A3B figures (kekzl/imp pull requests 1359, 1374) are an LRU cache of a fixed number
of slots per layer over 256 decode tokens from a cold cache. This module replays the same thing: every
stream (one prompt's tokens, in order, one token a step) starts with empty caches, and each MoE layer has
its own cache of `slots` experts (`predictors.sim_cache.SimCache` with one layer, eviction `lru`, `lfu` or
`belady` from `predictors.eviction`; no prefetch). A cache with a slot for every expert only takes cold
misses, so those sizes are computed exactly (1 - distinct experts / requests) without a replay; the
published sweep's 146 and 244 slots exceed the 128 experts, so they are such sizes.

Reuse (per layer, per stream): for each selection (token t routes expert e) the distance in tokens to the
next token of the stream that routes e again (never again: infinite). `reuse_next` = share at distance 1
(the published "45% of a token's experts repeat at the next token"), `reuse_within_8` = share <= 8, and
`median_reuse_distance` over every selection (infinite ones included, so it is inf when most are never
reused).
Pure numpy and predictors.{sim_cache, eviction}; no torch. Replays can spread over processes (`workers`).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from predictors.eviction import build_order
from predictors.sim_cache import SimCache

EVICTIONS = ("lru", "lfu", "belady")
PUBLISHED_QWEN3 = {  # Qwen3-30B-A3B, real weights (kekzl/imp #1374: LRU, 256 cold decode tokens; #1359)
    "source": "kekzl/imp pull requests 1374 (LRU sweep) and 1359 (reuse), Qwen3-30B-A3B-Q4_K_M",
    "num_experts": 128,
    "lru_slots": [24, 73, 146, 244],
    "lru_hit_rate": [0.366, 0.741, 0.894, 0.962],
    "reuse_next": 0.45,
    "reuse_within_8": 0.80,
    "median_reuse_distance": 2,
}
EXTRA_FRACTIONS = (0.125, 0.25, 0.5, 0.75)  # cache sizes besides the published ones, as shares of E


def cache_slots(num_experts: int, top_k: int) -> list[dict]:
    """The sizes to simulate: the published slot counts scaled to this twin's experts (x E / 128) and
    EXTRA_FRACTIONS of E; each at least top-k. [{slots, fraction, published_slots or None}] by slots."""
    out: dict[int, dict] = {}
    for pub in PUBLISHED_QWEN3["lru_slots"]:
        n = max(top_k, round(pub * num_experts / PUBLISHED_QWEN3["num_experts"]))
        out[n] = {"slots": n, "fraction": n / num_experts, "published_slots": pub}
    for f in EXTRA_FRACTIONS:
        n = max(top_k, round(f * num_experts))
        out.setdefault(n, {"slots": n, "fraction": n / num_experts, "published_slots": None})
    return sorted(out.values(), key=lambda r: r["slots"])


def replay_stream(stream: np.ndarray, slots: int, eviction: str) -> tuple[int, int]:
    """(hits, requests) of one layer's stream [T, k] through a cold cache of `slots` experts."""
    steps = [sorted(set(int(e) for e in row)) for row in stream]
    future = ((t, [(0, e) for e in s]) for t, s in enumerate(steps)) if eviction == "belady" else None
    cache = SimCache(slots, 1, build_order(eviction, future=future, ticks_per_token=1))
    for t, s in enumerate(steps):
        cache.now = t
        cache.route(0, s)
    c = cache.counters
    return c.hits_resident[0] + c.hits_prefetched[0], c.requests[0]


def _layer_job(args: tuple) -> dict:
    """One layer at every (slots, eviction): {(slots, eviction): [hits, requests]} (a process-pool job)."""
    streams, sizes, num_experts = args
    out = {}
    for slots in sizes:
        for ev in EVICTIONS:
            hits = reqs = 0
            for s in streams:
                if slots >= num_experts:  # everything fits: only cold misses, whatever the order
                    n = s.size
                    h = n - np.unique(s).size
                else:
                    h, n = replay_stream(s, slots, ev)
                hits, reqs = hits + h, reqs + n
            out[(slots, ev)] = [hits, reqs]
    return out


def cold_cache(
    streams_by_layer: list[list[np.ndarray]], num_experts: int, top_k: int, workers: int = 1
) -> dict:
    """Hit rates of cold per-layer caches: streams_by_layer[l] = that layer's streams, each [T, k] ids."""
    sizes = cache_slots(num_experts, top_k)
    jobs = [(streams, [r["slots"] for r in sizes], num_experts) for streams in streams_by_layer]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            per_layer = list(pool.map(_layer_job, jobs))
    else:
        per_layer = [_layer_job(j) for j in jobs]
    rows = []
    for r in sizes:
        row = dict(r)
        for ev in EVICTIONS:
            layer_rates = [h / max(1, n) for h, n in (pl[(r["slots"], ev)] for pl in per_layer)]
            hits = sum(pl[(r["slots"], ev)][0] for pl in per_layer)
            reqs = sum(pl[(r["slots"], ev)][1] for pl in per_layer)
            row[ev] = hits / max(1, reqs)
            row[f"{ev}_per_layer"] = [round(x, 4) for x in layer_rates]
        rows.append(row)
    lengths = [s.shape[0] for s in streams_by_layer[0]]
    return {
        "streams": len(lengths),
        "tokens_per_stream": {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))},
        "num_experts": num_experts,
        "top_k": top_k,
        "sizes": rows,
    }


def next_use_distances(stream: np.ndarray, num_experts: int) -> np.ndarray:
    """distance[T*k]: tokens from each selection of stream [T, k] to the next use of its expert (inf: none)."""
    t_len = stream.shape[0]
    nxt = np.full(num_experts, np.inf)  # next token (after the current one) routing each expert
    out = np.empty(stream.shape, dtype=np.float64)  # [T, k]
    for t in range(t_len - 1, -1, -1):
        row = stream[t]
        out[t] = nxt[row] - t
        nxt[row] = t
    return out.reshape(-1)


def reuse(streams_by_layer: list[list[np.ndarray]], num_experts: int) -> dict:
    """Reuse shares and the median reuse distance, per layer and over every selection of every layer."""
    layers, pooled = [], []
    for streams in streams_by_layer:
        d = np.concatenate([next_use_distances(s, num_experts) for s in streams])
        pooled.append(d)
        layers.append(_reuse_summary(d))
    summary = _reuse_summary(np.concatenate(pooled))
    return {**summary, "layers": layers}


def _reuse_summary(d: np.ndarray) -> dict:
    med = float(np.median(d)) if d.size else math.nan
    return {
        "selections": int(d.size),
        "reuse_next": float((d == 1).mean()) if d.size else None,
        "reuse_within_8": float((d <= 8).mean()) if d.size else None,
        "never_reused": float(np.isinf(d).mean()) if d.size else None,
        "median_reuse_distance": med if math.isfinite(med) else "inf",
    }
