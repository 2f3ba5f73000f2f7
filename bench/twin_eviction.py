"""Eviction x prefetch on a routing twin's replay artefact, through the simulator's model of the engine's cache
(issue #17, item 1: "measure in `moe-prefetch simulate` first").

    python bench/twin_eviction.py --out bench/results            # every committed twin in bench/twins
    python bench/twin_eviction.py --twins bench/twins/twin_replay_deepseek-v2-lite.json --fractions 0.5
    python bench/twin_eviction.py --twins bench/twins/twin_replay_qwen3-30b-a3b.json --merge --out bench/results

An artefact (`bench/twin_replay.py`) holds, per MoE layer and token of its 64 prompts, the twin's routed
experts and its predictors' top-k' — at the real model's topology. This replays it through
`predictors.simulate.replay` (the engine's `ExpertCache` semantics, one pool of slots over all layers,
prompt after prompt, one batch-1 decode step per token, the cache cold at the start) for each cache
fraction x eviction order x prefetch policy:
- policies: `none`; `exact` (the predictor's top-k, as the engine's `exact`); `overprovision` (its top-k',
  the artefact's k'); `oracle` (the step's own routed set);
- evictions: `lru` (the engine's), `lfu` (decayed counts, half-life 64 tokens), `predicted` (lowest
  predictor score at the layer's last tap: the artefact's ranks turned into scores, 1 - rank / (k' + 1) for
  the predicted ids, 0 for the rest) and `belady` (the offline optimum for demand loads).
Time per token is modelled from the twin-replayed decode run of the same shape when it exists
(`bench/results/decode_<shape>_twin.json`: its resident batch-1 step and its measured pinned host->device
bandwidth), else the simulator's H200 defaults; the clairvoyant floor (issue #17) is
max(resident step, bytes Belady-with-no-prefetch copies / bandwidth); `none` rows also carry a modelled time
with the host CPU computing part of the misses while PCIe copies the rest (`hybrid_ms`). Rows also carry the engine's measured
batch-1 tok/s and hit rate for the same cache and policy (LRU eviction) where that run measured them: the
engine ran short segments (a prefill, then 32 decode steps), this replays every token, so hit rates differ.

Writes `<out>/eviction_twins.{json,md,png}`. Imports numpy, matplotlib, `bench.twin_replay`,
`predictors.{simulate, sim_inputs}` and `engine.model.presets` (via the shape's expert size) only.
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
from predictors.sim_policies import PolicyRun  # noqa: E402
from predictors.simulate import TimeModel, Workload, replay, summarize  # noqa: E402

EVICTIONS = ("lru", "lfu", "predicted", "belady")
# The H200 host (DESIGN.md): torch bf16 GEMV of one 9.4 MB Qwen3-30B-A3B expert 0.31 ms, ~30% slower while
# copies run; scaled by bytes to other experts (the GEMV reads the weights once).
CPU_EXPERT_MS, CPU_EXPERT_BYTES, CPU_SLOWDOWN_DURING_COPIES = 0.31, 9.4e6, 1.3
POLICIES = ("none", "exact", "overprovision", "oracle")
FRACTIONS = (0.25, 0.5, 0.75)


def workload(
    path: Path, max_tokens: int | None = None
) -> tuple[Workload, np.ndarray, dict, dict[int, np.ndarray]]:
    """(workload of every token as a decode step, predicted ids [L, N, k'], manifest, {d: the lookahead bank
    of distance d's predicted ids [L-d, N, k']}) of an artefact, its first `max_tokens` tokens when given."""
    manifest, a = twin_replay.load(path)
    routed = a["routed_ids"][:, :max_tokens].astype(np.int32)  # [L, N, k]
    nl, n, k = routed.shape
    e = twin_replay.routed_experts(manifest["twin_config"])
    pred = a["predicted_ids"][:, :max_tokens].astype(np.int32)  # [L, N, k']
    kp = pred.shape[2]
    scores = []
    rank_score = (1.0 - np.arange(kp) / (kp + 1)).astype(np.float32)  # [k']
    for layer in range(nl):
        s = np.zeros((n, e), dtype=np.float32)  # [N, E]
        np.put_along_axis(s, pred[layer], rank_score[None, :].repeat(n, 0), axis=1)
        scores.append(s)
    w = Workload(
        source=str(path),
        kind="traces",
        num_layers=nl,
        num_experts=e,
        top_k=k,
        routed=[np.sort(routed[layer], axis=1) for layer in range(nl)],
        steps=n,
        streams=int(np.searchsorted(a["offsets"], n, side="left")),  # prompts begun in the first n tokens
        fingerprint=manifest.get("twin_fingerprint"),
        scores=scores,
    )
    ahead = {
        d: a[twin_replay.ahead_key(d)][:, :max_tokens].astype(np.int32) for d in manifest.get("ahead", [])
    }
    return w, pred, manifest, ahead


def lookahead_runs(w: Workload, banks: dict[int, np.ndarray]) -> dict[str, PolicyRun]:
    """`exact+d` and `overprovision+d` for each lookahead bank the artefact carries (`train_twin
    --lookahead`; `banks` from `workload`): at layer i's tap the bank's top-k (top-k') for layer i + d, the
    engine's `exact` (`overprovision`) with a bundle of distance d; {} without any."""
    out = {}
    for d, ahead in banks.items():  # ahead: [L-d, N, k']
        kp = ahead.shape[2]
        tables = [ahead[i][:, : w.top_k] for i in range(w.num_layers - d)]
        out[f"exact+{d}"] = PolicyRun("exact", f"exact+{d}", shift=d, tables=tables)
        out[f"overprovision+{d}"] = PolicyRun(
            "overprovision", f"overprovision+{d}", shift=d, tables=list(ahead), params={"k_prime": kp}
        )
    return out


def policy_runs(w: Workload, pred: np.ndarray) -> dict[str, PolicyRun]:
    k, kp = w.top_k, pred.shape[2]
    return {
        "none": PolicyRun("none", "none"),
        "exact": PolicyRun("exact", "exact", tables=[pred[layer][:, :k] for layer in range(w.num_layers)]),
        "overprovision": PolicyRun(
            "overprovision", f"overprovision({kp})", tables=list(pred), params={"k_prime": kp}
        ),
        "oracle": PolicyRun("oracle", "oracle"),
    }


def engine_measured(
    decode: dict | None, suffixes: dict[str, str] | None = None
) -> tuple[dict, TimeModel, str]:
    """{(fraction, policy): (tok/s, hit)} of the twin-replayed engine run (streamed or segmented as its
    step choice picked), the time model from it, and where the model's numbers came from. `suffixes`:
    variants to read too, {variant: suffix}, keyed (fraction, policy + suffix)."""
    if decode is None:
        return {}, TimeModel(), "simulator defaults (H200, Qwen3-30B-A3B shape)"
    out, step_ms, eager = {}, None, False
    for c in decode["configs"]:
        suffix = "" if c.get("variant") in ("", None) else (suffixes or {}).get(c["variant"])
        if suffix is None or c.get("batch", 1) != 1:
            continue
        key, summary = (round(float(c["fraction"]), 3), c["policy"] + suffix), c["summary"]
        steps = c.get("steps", {})
        if (
            steps and not steps.get("graph") and steps.get("eager")
        ):  # a failed capture: not the engine's speed
            eager = True
            continue
        out[key] = (summary["tok_s_median"], summary.get("hit_rate"))
        if c["fraction"] == 1.0 and c["policy"] == "none" and not suffix:
            step_ms = 1e3 / summary["tok_s_median"]
    tm = TimeModel(step_ms=step_ms or TimeModel.step_ms, bandwidth_gbs=decode["h2d_gb_per_s"])
    where = f"{decode['device']}: resident step and pinned bandwidth of the twin-replayed decode run"
    if step_ms is None:
        where = (
            f"{decode['device']}: pinned bandwidth of the twin-replayed decode run; its steps ran eager (a graph "
            "capture failed), so the resident step is the simulator's default"
            if eager
            else f"{decode['device']}: pinned bandwidth of the twin-replayed decode run; no resident run"
        )
    return out, tm, where


def current_decode(decode_dir: Path, shape: str, artefact: dict, kind: str = "twin") -> dict | None:
    """The shape's twin-replayed decode record `decode_<shape>_<kind>.json` (`twin`: the LRU sweep, `lfu`:
    the LFU one), if it replayed this artefact's twin (the same fingerprint); a record of an earlier twin of
    the shape says nothing about this one."""
    path = decode_dir / f"decode_{shape.replace('-', '_')}_{kind}.json"
    if not path.exists():
        return None
    decode = json.loads(path.read_text())
    if decode.get("replay", {}).get("twin_fingerprint") != artefact.get("twin_fingerprint"):
        print(f"{path.name}: replayed another {shape} twin; its engine figures are left out", flush=True)
        return None
    return decode


def _one(args) -> dict:
    path, max_tokens, fraction, eviction, policy = args
    w, pred, _, _ = _cached(path, max_tokens)
    slots = max(w.top_k, round(fraction * w.total_experts))
    c = replay(w, slots, eviction, policy_runs(w, pred)[policy], preload_full=False)
    return {"fraction": fraction, "slots": slots, "eviction": eviction, "policy": policy, "counters": c}


_CACHE: dict = {}


def _cached(path: str, max_tokens: int | None = None):
    if (path, max_tokens) not in _CACHE:
        _CACHE[(path, max_tokens)] = workload(Path(path), max_tokens)
    return _CACHE[(path, max_tokens)]


def simulate_twin(
    path: Path,
    fractions,
    evictions,
    policies,
    decode: dict | None,
    expert_bytes,
    workers: int,
    max_tokens: int | None = None,
):
    """Every (fraction, eviction, policy) replay of one artefact, with per-token figures, the floor and the
    engine's measured figures (see the module docstring)."""
    w, _pred, manifest, _ = _cached(str(path), max_tokens)
    measured, tm, tm_source = engine_measured(decode)
    jobs = [(str(path), max_tokens, f, e, p) for f in fractions for e in evictions for p in policies]
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(_one, jobs))
    rows = []
    for r in done:
        s = summarize(r.pop("counters"), w.steps, expert_bytes, tm)
        s.pop("counts")
        rows.append({**r, **s})
    for f in fractions:  # the clairvoyant floor: Belady, no prefetch, every copy hidden behind compute
        floor = next(
            x for x in rows if x["fraction"] == f and x["eviction"] == "belady" and x["policy"] == "none"
        )
        floor_ms = (
            max(tm.step_ms, floor["bytes_per_token"] / (tm.bandwidth_gbs * 1e6)) if expert_bytes else None
        )
        for x in rows:
            if x["fraction"] != f:
                continue
            x["clairvoyant_floor_ms"] = floor_ms
            if floor_ms:
                x["overlap_over_floor"] = x["overlap_ms"] / floor_ms
            if x["eviction"] == "lru" and (round(f, 3), x["policy"]) in measured:
                tok_s, hit = measured[(round(f, 3), x["policy"])]
                x["engine_tok_s"], x["engine_hit_rate"] = tok_s, hit
                if floor_ms:
                    x["engine_ms_over_floor"] = (1e3 / tok_s) / floor_ms
    return {
        "twin": manifest["shape"].removeprefix("twin_replay_"),
        "artefact": str(path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path),
        "artefact_sha256": manifest["sha256"],
        "routing": manifest["routing_source"],
        "num_moe_layers": w.num_layers,
        "num_experts": w.num_experts,
        "top_k": w.top_k,
        "k_prime": _pred.shape[2],
        "tokens": w.steps,
        "prompts": w.streams,
        "expert_bytes": expert_bytes,
        "time_model": {"step_ms": tm.step_ms, "bandwidth_gbs": tm.bandwidth_gbs, "source": tm_source},
        "seconds": round(time.monotonic() - t0, 1),
        "rows": rows,
    }


def hybrid_ms(misses_per_token: float, expert_bytes: int, tm: dict) -> float:
    """Modelled time per token when the host CPU computes part of each token's demand misses while PCIe
    copies the rest (issue #17, item 4), the split that finishes both together:
    m * t_copy * t_cpu / (t_copy + t_cpu), at least the resident step. t_copy = one expert's bytes over the
    bandwidth; t_cpu = CPU_EXPERT_MS scaled by bytes, slowed by CPU_SLOWDOWN_DURING_COPIES."""
    t_copy = expert_bytes / (tm["bandwidth_gbs"] * 1e6)  # ms
    t_cpu = CPU_EXPERT_MS * expert_bytes / CPU_EXPERT_BYTES * CPU_SLOWDOWN_DURING_COPIES
    return max(tm["step_ms"], misses_per_token * t_copy * t_cpu / (t_copy + t_cpu))


def add_hybrid(doc: dict) -> None:
    """`hybrid_ms` and `hybrid_over_floor` on every `none` row (no prefetch: every miss is a demand miss)."""
    for t in doc["twins"]:
        if not t.get("expert_bytes"):
            continue
        for r in t["rows"]:
            if r["policy"] == "none":
                r["hybrid_ms"] = hybrid_ms(r["misses_per_token"], t["expert_bytes"], t["time_model"])
                r["hybrid_over_floor"] = r["hybrid_ms"] / r["clairvoyant_floor_ms"]
    doc["hybrid_model"] = {
        "cpu_expert_ms": CPU_EXPERT_MS,
        "cpu_expert_bytes": CPU_EXPERT_BYTES,
        "cpu_slowdown_during_copies": CPU_SLOWDOWN_DURING_COPIES,
        "source": "DESIGN.md: the H200 host (16 cores), torch bf16 GEMV of one Qwen3-30B-A3B expert",
    }


def main() -> None:
    from bench.twin_eviction_report import plot, write_md
    from predictors.sim_inputs import model_shape

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--twins", type=Path, nargs="*", default=sorted((ROOT / "bench/twins").glob("twin_replay_*.json"))
    )
    ap.add_argument(
        "--decode", type=Path, default=ROOT / "bench/results", help="folder of decode_<shape>_twin.json"
    )
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--evictions", default=",".join(EVICTIONS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=None, help="replay only each artefact's first N tokens")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--rewrite", action="store_true", help="re-derive and re-render <out>/eviction_twins.json, no replays"
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the replayed twins' entries of an existing <out>/eviction_twins.json",
    )
    args = ap.parse_args()
    if args.rewrite:
        doc = json.loads((args.out / "eviction_twins.json").read_text())
        add_hybrid(doc)
        (args.out / "eviction_twins.json").write_text(json.dumps(doc, indent=1) + "\n")
        write_md(doc, args.out / "eviction_twins.md")
        plot(doc, args.out / "eviction_twins.png")
        print(f"rewrote {args.out}/eviction_twins.{{json,md,png}}")
        return
    fractions = [float(f) for f in args.fractions.split(",")]
    evictions, policies = args.evictions.split(","), args.policies.split(",")
    if "belady" not in evictions or "none" not in policies:
        raise SystemExit("the clairvoyant floor needs belady and none in the sweep")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.twins:
        artefact = json.loads(path.read_text())
        shape = artefact["shape"].removeprefix("twin_replay_")
        decode = current_decode(args.decode, shape, artefact)
        eb = model_shape(shape).expert_bytes
        print(f"{shape}: {len(fractions) * len(evictions) * len(policies)} replays ...", flush=True)
        results.append(
            simulate_twin(path, fractions, evictions, policies, decode, eb, args.workers, args.tokens)
        )
        print(f"{shape}: done in {results[-1]['seconds']} s", flush=True)
    command = "python " + " ".join(sys.argv)
    for r in results:
        r["command"] = command
    doc = {"kind": "eviction_twins", "command": command, "twins": results}
    old = args.out / "eviction_twins.json"
    if args.merge and old.exists():  # keep the twins this run did not replay, in their order
        done, before = {r["twin"]: r for r in results}, json.loads(old.read_text())
        # a kept twin written before each entry recorded its command ran the old report's command
        kept = [t if "command" in t else {**t, "command": before.get("command")} for t in before["twins"]]
        doc["twins"] = [done.pop(t["twin"], t) for t in kept] + list(done.values())
    add_hybrid(doc)
    (args.out / "eviction_twins.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc, args.out / "eviction_twins.md")
    plot(doc, args.out / "eviction_twins.png")
    print(f"wrote {args.out}/eviction_twins.{{json,md,png}}")


if __name__ == "__main__":
    main()
