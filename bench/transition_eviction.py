"""Does knowing how routing moves from one token to the next beat LFU eviction? (issue #17, item 1, in the
simulator first.)

    python bench/transition_eviction.py --out bench/results        # the Qwen3 and DeepSeek twins, 50% and 25%
    python bench/transition_eviction.py --twins bench/twins/twin_replay_qwen3-30b-a3b.json --fractions 0.5
    python bench/transition_eviction.py --orders lfu@8,lfu@16,lfu@32,lfu,lfu@128,lfu@256,lfu@1024 \
        --name lfu_half_life --out bench/results                        # LFU's half-life (tokens) swept

The engine's LFU ranks a layer's experts by how often they were routed lately. A `transition` order ranks
them by how likely the *next* token's routing at that layer is to pick them, given the current token's:
per MoE layer a matrix M[a, b] = P(b routed at token t+1 | a routed at t), counted over the training
prompts and smoothed towards b's frequency; an expert's score is the mean of M[a, .] over the layer's last
routed set. `mix` averages that with the layer's LFU share (its decayed count over the layer's total, times
k). Both are fitted on one half of the artefact's prompts and replayed on the other (two folds: every token
is replayed once, by the matrices of the half it is not in), with `lru`, `lfu` and `belady` replayed on the
same halves, no prefetch, one pool of slots over every layer as in the engine's cache
(`predictors.simulate.replay`, cold at the start of each half).

`--orders` also takes `lfu@H`: LFU with a half-life of H tokens (the engine's default is 64). Writes
`<out>/<name>.{json,md}` (default name `transition_eviction`). Imports numpy, `bench.twin_replay`, `bench.twin_eviction`
(the artefacts' workload) and `predictors` (the simulator) only.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import twin_replay  # noqa: E402
from engine.experts.eviction import DEFAULT_LFU_HALF_LIFE, HeapOrder  # noqa: E402
from predictors.sim_policies import PolicyRun  # noqa: E402
from predictors.simulate import Workload, replay  # noqa: E402

TWINS = ("twin_replay_qwen3-30b-a3b.json", "twin_replay_deepseek-v2-lite.json")
ORDERS = ("lru", "lfu", "transition", "mix", "belady")


def fit_transitions(routed: np.ndarray, spans: list[tuple[int, int]], num_experts: int, alpha: float = 1.0):
    """[L, E, E] float32: M[l, a, b] = P(b routed at layer l of token t+1 | a routed there at t), from the
    consecutive tokens inside each (start, end) span of `routed` [L, N, k]; `alpha` pseudo-counts of b's
    own frequency (times k) for every a, so an expert never seen after `a` keeps its base rate."""
    nl, _, k = routed.shape
    counts = np.zeros((nl, num_experts, num_experts))
    seen = np.zeros((nl, num_experts))
    freq = np.zeros((nl, num_experts))
    for lo, hi in spans:
        for layer in range(nl):
            a, b = routed[layer, lo : hi - 1], routed[layer, lo + 1 : hi]  # [T, k] each
            rows = np.repeat(a, k, axis=1).reshape(-1)  # every (a, b) pair of a step
            cols = np.tile(b, (1, k)).reshape(-1)
            np.add.at(counts[layer], (rows, cols), 1)
            np.add.at(seen[layer], a.reshape(-1), 1)
            np.add.at(freq[layer], b.reshape(-1), 1)
    prior = freq / np.maximum(freq.sum(axis=1, keepdims=True), 1) * k  # [L, E]: b's share of a step
    return ((counts + alpha * prior[:, None, :]) / (seen[:, :, None] + alpha)).astype(np.float32)


class Transition(HeapOrder):
    """Lowest chance of being routed at its layer's next step first (`lfu_share` 0), or of a mix of that
    with the layer's LFU share (0.5: `mix`); ties to the least recently touched. A layer's scores are
    recomputed once its routed set of a step is complete (the first touch of another step or a victim
    asked for), and its residents re-ranked (at most E heap pushes a layer-step)."""

    name = "transition"

    def __init__(self, transitions: np.ndarray, lfu_share: float = 0.0, half_life_ticks: float = 1.0) -> None:
        super().__init__()
        self.m = transitions
        self.lfu_share = lfu_share
        self.half_life = half_life_ticks
        self.score = transitions.mean(axis=1)  # [L, E]: before a layer is routed, the average row
        self.counts = np.full(transitions.shape[:2], 1e-9)  # decayed routed uses (weights 2^(t / half life))
        self._layer_keys: dict[int, set] = {}
        self._touched: dict = {}
        self._step: tuple[int, int] | None = None  # (layer, tick) being routed
        self._routed: list[int] = []
        self._dirty = False

    def _priority(self, key) -> float:
        return float(self.score[key])

    def _tie(self, key) -> int:
        return self._touched[key]

    def _stamp(self, key) -> None:
        self._seq += 1
        self._touched[key] = self._seq

    def insert(self, key, now: int) -> None:
        self._layer_keys.setdefault(key[0], set()).add(key)
        self._stamp(key)
        self._push(key)

    def touch(self, key, now: int, routed: bool) -> None:
        if routed:
            self.use(key, now)
        self._stamp(key)
        self._push(key)

    def use(self, key, now: int) -> None:
        if (key[0], now) != self._step:
            self._rescore()
            self._step, self._routed = (key[0], now), []
        self._routed.append(key[1])
        self._dirty = True

    def remove(self, key) -> None:
        super().remove(key)
        self._layer_keys[key[0]].discard(key)
        del self._touched[key]

    def victim(self, pinned):
        self._rescore()
        return super().victim(pinned)

    def _rescore(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        layer, now = self._step
        routed = sorted(set(self._routed))
        nxt = self.m[layer][routed].mean(axis=0)  # [E]
        if self.lfu_share:
            self.counts[layer][routed] += 2.0 ** (now / self.half_life)
            share = self.counts[layer] / self.counts[layer].sum() * len(routed)
            nxt = (1.0 - self.lfu_share) * nxt + self.lfu_share * share
        self.score[layer] = nxt
        for key in self._layer_keys.get(layer, ()):
            if self._entry[key][0] != self._priority(key):
                self._push(key)


@functools.cache
def _load(path: Path):
    manifest, arrays = twin_replay.load(path)
    experts = twin_replay.routed_experts(manifest["twin_config"])
    return manifest, arrays["routed_ids"].astype(np.int64), arrays["offsets"].astype(np.int64), experts


def folds(offsets: np.ndarray) -> list[tuple[list[tuple[int, int]], tuple[int, int]]]:
    """Two folds over the prompts: (training spans, replayed token range), each half of the prompts once."""
    p = len(offsets) - 1
    cut = int(offsets[p // 2])
    first = [(int(offsets[i]), int(offsets[i + 1])) for i in range(p // 2)]
    second = [(int(offsets[i]), int(offsets[i + 1])) for i in range(p // 2, p)]
    return [(first, (cut, int(offsets[-1]))), (second, (0, cut))]


@functools.cache
def _fitted(path: Path, fold: int) -> np.ndarray:
    """The transitions of fold `fold`'s training half, fitted once per worker (both orders and every cache
    size replay with them)."""
    _, routed, offsets, experts = _load(path)
    return fit_transitions(routed, folds(offsets)[fold][0], experts)


def _job(args) -> dict:
    path, fraction, order_name, fold = args
    manifest, routed, offsets, experts = _load(Path(path))
    nl, _, k = routed.shape
    _, (lo, hi) = folds(offsets)[fold]
    part = routed[:, lo:hi]
    w = Workload(source=path, kind="traces", num_layers=nl, num_experts=experts, top_k=k,
                 routed=[np.sort(part[layer], axis=1) for layer in range(nl)], steps=hi - lo, streams=1)  # fmt: skip
    slots = max(k, round(fraction * nl * experts))
    order = None
    if order_name in ("transition", "mix"):
        m = _fitted(Path(path), fold)
        order = Transition(m, 0.5 if order_name == "mix" else 0.0, DEFAULT_LFU_HALF_LIFE * nl)
    name, _, half_life = order_name.partition("@")  # lfu@H: LFU with a half-life of H tokens
    c = replay(w, slots, "lru" if order is not None else name, PolicyRun("none", "none"), preload_full=False,
               order=order, lfu_half_life=float(half_life or DEFAULT_LFU_HALF_LIFE))  # fmt: skip
    return {"twin": manifest["shape"].removeprefix("twin_replay_"), "fraction": fraction, "eviction": order_name,
            "fold": fold, "tokens": hi - lo, "requests": sum(c.requests), "misses": sum(c.misses)}  # fmt: skip


def summarise(parts: list[dict]) -> list[dict]:
    """The two folds of each (twin, fraction, eviction) summed: hit rate, misses per token, and misses
    against LFU's."""
    rows: dict[tuple, dict] = {}
    for r in parts:
        key = (r["twin"], r["fraction"], r["eviction"])
        s = rows.setdefault(key, {"twin": key[0], "fraction": key[1], "eviction": key[2], "tokens": 0,
                                  "requests": 0, "misses": 0})  # fmt: skip
        for f in ("tokens", "requests", "misses"):
            s[f] += r[f]
    for s in rows.values():
        s["hit_rate"] = 1.0 - s["misses"] / s["requests"]
        s["misses_per_token"] = s["misses"] / s["tokens"]
    for s in rows.values():
        lfu = rows.get((s["twin"], s["fraction"], "lfu"))
        s["misses_vs_lfu"] = s["misses"] / lfu["misses"] if lfu else None

    def rank(name: str) -> tuple[int, float]:
        base, _, half_life = name.partition("@")
        return (ORDERS.index(base) if base in ORDERS else len(ORDERS), float(half_life or 0))

    return sorted(rows.values(), key=lambda s: (s["twin"], -s["fraction"], rank(s["eviction"])))


def markdown(rows: list[dict], command: str) -> str:
    out = ["# Next-token transition eviction against LFU (simulated, held-out prompts)", "", f"`{command}`", "",
           "| twin | cache | eviction | hit rate | misses / token | misses / LFU's |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['twin']} | {100 * r['fraction']:.0f}% | {r['eviction']} | {100 * r['hit_rate']:.1f}% | "
                   f"{r['misses_per_token']:.1f} | {r['misses_vs_lfu']:.3f} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=Path, nargs="*", default=[ROOT / "bench" / "twins" / t for t in TWINS])
    ap.add_argument("--fractions", default="0.5,0.25")
    ap.add_argument("--orders", default=",".join(ORDERS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/transition_eviction"))
    ap.add_argument("--name", default="transition_eviction", help="the output files' name")
    args = ap.parse_args()
    jobs = [(str(t), float(f), o, fold) for t in args.twins for f in args.fractions.split(",")
            for o in args.orders.split(",") for fold in (0, 1)]  # fmt: skip
    t0 = time.monotonic()
    parts = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, r in enumerate(pool.map(_job, jobs), 1):
            parts.append(r)
            print(f"[{i}/{len(jobs)}, {time.monotonic() - t0:.0f} s] {r['twin']} {100 * r['fraction']:.0f}% "
                  f"{r['eviction']} fold {r['fold']}: hit {1 - r['misses'] / r['requests']:.4f}", flush=True)  # fmt: skip
    rows = summarise(parts)
    command = "python bench/transition_eviction.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "transition_eviction", "command": command, "seconds": round(time.monotonic() - t0, 1),
           "rows": rows}  # fmt: skip
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
