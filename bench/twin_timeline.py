"""What issuing copies earlier can buy, before a GPU measures it: the simulator's per-layer clock
(`predictors.sim_timeline`) on a routing twin's replay, fitted to the engine's measured `none` and checked
against its other measured policies (issue #17: measure in the simulator first, then in the engine).

    python bench/twin_timeline.py --out bench/results                  # the DeepSeek-V2-Lite twin, ~10 minutes
    python bench/twin_timeline.py --twin bench/twins/twin_replay_<shape>.json --out ...

For each cache size it replays the artefact's tokens as batch-1 decode steps (`predictors.simulate.replay`,
LRU, the engine's cache semantics) under `none`, `exact` (the twin's predictors), `exact+d` and
`overprovision+d` (its trained lookahead banks' top-k and top-k', where the artefact has them: `train_twin
--lookahead`), `oracle`, and the oracle
issued 1, 2 and 4 MoE layers ahead (`MOE_ORACLE_AHEAD`), records every layer's copies, and plays them on
the clock: one copy engine at the twin decode run's measured bandwidth, the resident step split evenly
between attention and experts, and the host's decision at each segment boundary fitted so that `none` at
the fit cache (50%) takes what the engine measured. The other configurations' predicted ms per token are
then set beside the engine's (`decode_<shape>_twin.json`, the same twin only), and the ratios to `none`
say what lookahead can gain at best (the oracle ahead) on this routing. Writes
`<out>/timeline_<shape>.{json,md}`. Every configuration runs under LRU and LFU (`MOE_EVICTION`), so the
table also says what the two mechanisms give together. Every lookahead configuration (`exact+d`, `oracle+d`)
also runs under LRU with its copies queued behind each layer's demand copies (`... after demand`,
`MOE_LOOKAHEAD_AFTER_DEMAND`). With `--coded R`, `none`, `exact+d` and `oracle+d` also run with every copy R x
an expert's bytes (`... coded`: experts losslessly coded for the copy, `bench/expert_entropy.py`; the GPU's
decoding taken as free). With `--coded bench/results/coded_experts.json` they run the engine's coded copy path
instead (`MOE_CODED_EXPERTS`, `predictors.sim_timeline.Coding` from that record's H200 measurements: the
code's copy time, staging rows, batched decodes, the host's extra time a copy), beside two what-ifs the engine
does not have: double-buffered staging rows (`... coded, 16 rows`) and a coded copy costing the host what a
plain one does (`... coded, host as plain`); the lookahead ones also after demand (`... after demand coded`, under LRU and LFU).
`--decode-kind coded_lru` fits the clock to `decode_<shape>_coded_lru.json` (bench/gpu_coded_session.sh),
whose coded rows are then the engine's columns, every ratio within that one call.
Imports numpy and `predictors` (through `bench.twin_eviction`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.twin_eviction import (  # noqa: E402
    CPU_EXPERT_BYTES,
    CPU_EXPERT_MS,
    CPU_SLOWDOWN_DURING_COPIES,
    current_decode,
    engine_measured,
    lookahead_runs,
    policy_runs,
    workload,
)
from predictors.sim_inputs import model_shape  # noqa: E402
from predictors.sim_policies import PolicyRun  # noqa: E402
from predictors.sim_timeline import Clock, Coding, Timeline, fit_decision_ms  # noqa: E402
from predictors.simulate import replay  # noqa: E402

AHEAD = (1, 2, 4)


HYBRID_POLICIES = ("none", "oracle+1")  # also run with hybrid misses on the clock
AFTER_DEMAND = " after demand"  # lookahead configurations also run with MOE_LOOKAHEAD_AFTER_DEMAND (LRU)
CODED = " coded"  # with --coded R: copies of R x an expert's bytes (losslessly coded experts, not built)
CODED_POLICIES = ("none", "exact+1", "exact+2", "oracle+1", "oracle+2")
ROWS16 = " coded, 16 rows"  # what-if: double-buffered staging rows (16 rows, batches of 8)
HOST_AS_PLAIN = " coded, host as plain"  # what-if: a coded copy costs the host what a plain one does
VARIANT_SUFFIX = {
    "coded": CODED,
    "after-demand": AFTER_DEMAND,
    "coded-after-demand": AFTER_DEMAND + CODED,
}  # bench/decode.py variants -> row suffixes (engine_measured reads them)


def coding_from(path: Path, weights: int | None = None, steps: int = 128) -> Coding:
    """The engine's coded copy path as bench/coded_experts.py measured it (`steps`: the codec's block length,
    engine.experts.coded's default): a code's copy time over a plain expert's, a decode launch of one code and
    of eight, the host's time per coded copy over a plain one's. `weights`: an expert's weights where they
    differ from the measured one's; a code's decode time scales with them, a launch's fixed part does not."""
    doc = json.loads(path.read_text())
    (codec,) = [c for c in doc["codec"] if c["steps"] == steps]
    fills = doc["fill"]["runs"]
    (plain,) = [r for r in fills if not r["coded"]]
    (coded,) = [r for r in fills if r["coded"] and r.get("steps") == steps]
    group = Coding.group
    per = (codec["group_decode_ms"] - codec["decode_ms"]) / (group - 1)
    scale = weights / doc["weights_per_expert"] if weights else 1.0
    return Coding(
        copy_share=codec["h2d_code_ms"] / doc["h2d_bf16_ms"],
        decode_base_ms=codec["decode_ms"] - per,
        decode_per_expert_ms=per * scale,
        host_extra_ms=max(0.0, coded["host_ms_per_expert"] - plain["host_ms_per_expert"]),
    )


def configurations(w, pred, ahead: dict[str, PolicyRun] | None = None) -> dict[str, PolicyRun]:
    """none, exact, the artefact's trained lookahead banks (`exact+d`, `overprovision+d`: `ahead`), oracle and
    oracle+d."""
    runs = policy_runs(w, pred)
    out = {"none": runs["none"], "exact": runs["exact"], **(ahead or {}), "oracle": runs["oracle"]}
    for d in AHEAD:
        if d < w.num_layers:
            out[f"oracle+{d}"] = PolicyRun("oracle", f"oracle+{d}", shift=d)
    return out


def width_runs(w, banks: dict, widths: list[int]) -> dict[str, PolicyRun]:
    """`overprovision@m+d`: each lookahead bank's top-m ids for layer i + d at layer i's tap, m other than k
    (the engine's `MOE_POLICY=overprovision MOE_OVERPROVISION=m` with a bundle of distance d)."""
    out = {}
    for d, ahead in banks.items():  # ahead: [L-d, N, k']
        for m in widths:
            if m != w.top_k and m <= ahead.shape[2]:
                tables = [ahead[i][:, :m] for i in range(w.num_layers - d)]
                name = f"overprovision@{m}+{d}"
                out[name] = PolicyRun("overprovision", name, shift=d, tables=tables, params={"k_prime": m})
    return out


def run(
    twin: Path,
    decode_dir: Path,
    fractions: list[float],
    fit_fraction: float,
    share: float,
    tokens: int | None,
    evictions: tuple[str, ...] = ("lru", "lfu"),
    coded: float | Path | None = None,
    decode_kind: str = "twin",
    widths: list[int] = (),
    only: list[str] = (),
    predict_ms: float = 0.0,
) -> dict:
    """`coded`: a share of an expert's bytes (coded copies, decoding free), or bench/coded_experts.py's record
    of the engine's coded copy path (`coding_from`, scaled to this shape's experts). `widths`: also each
    lookahead bank's top-m (`width_runs`); `only`: play just these configurations (`none` always);
    `predict_ms`: a trained tap's predictor in line (every policy but `none` and `oracle`)."""
    artefact = json.loads(twin.read_text())
    shape = artefact["shape"].removeprefix("twin_replay_")
    decode = current_decode(decode_dir, shape, artefact, decode_kind)
    if decode is None:
        raise SystemExit(
            f"{shape}: no decode_*_{decode_kind} record of this twin in {decode_dir} to fit the clock to"
        )
    measured, tm, where = engine_measured(decode, VARIANT_SUFFIX)
    lfu_kind = "coded_lfu" if decode_kind == "coded_lru" else "lfu"
    lfu = current_decode(decode_dir, shape, artefact, lfu_kind)
    calls = {
        "lru": decode.get("started"),
        "lfu": (lfu or {}).get("started"),
    }  # None: a record before `started`
    by_eviction = {"lru": measured, "lfu": engine_measured(lfu, VARIANT_SUFFIX)[0] if lfu else {}}
    if (1.0, "none") not in measured:
        raise SystemExit(f"{shape}: the decode record has no resident run with graph steps ({where})")
    w, pred, _, banks = workload(twin.with_suffix(".npz"), tokens)
    eb = model_shape(shape).expert_bytes
    base = Timeline(step_ms=tm.step_ms, bandwidth_gbs=tm.bandwidth_gbs, attention_share=share)
    runs = configurations(w, pred, {**lookahead_runs(w, banks), **width_runs(w, banks, widths)})
    if only:
        unknown = set(only) - set(runs)
        if unknown:
            raise SystemExit(f"--only: no configuration {sorted(unknown)} (there are {sorted(runs)})")
        runs = {k: v for k, v in runs.items() if k == "none" or k in only}
    t0 = time.monotonic()
    # the fit first, on one configuration's events; every other replay then runs on the fitted clock as it
    # goes (a Clock holds one number per layer, not the replay's events)
    fit_slots = max(w.top_k, round(fit_fraction * w.total_experts))
    events: list = []
    replay(w, fit_slots, "lru", runs["none"], preload_full=False, events=events)
    target = 1e3 / measured[(fit_fraction, "none")][0]
    decision = fit_decision_ms(events, w.steps, w.num_layers, eb, base, target)
    if decision is None:
        raise SystemExit(f"{shape}: no host decision time makes the clock reach the measured {target:.2f} ms")
    del events
    tl = Timeline(**{**base.__dict__, "decision_ms": decision})
    # hybrid misses (MOE_HYBRID_MISSES): the host's time for one expert on one row, the DESIGN.md rate of
    # the H200's host scaled by the expert's bytes and slowed while copies run (bench/twin_eviction.py)
    host_ms = CPU_EXPERT_MS * eb / CPU_EXPERT_BYTES * CPU_SLOWDOWN_DURING_COPIES
    hybrid_tl = Timeline(**{**tl.__dict__, "host_ms": host_ms})
    # MOE_LOOKAHEAD_AFTER_DEMAND: a tap's copies for a later layer queued behind the layer's demand copies
    after_tl = Timeline(**{**tl.__dict__, "demand_first": True})
    engine_coding = isinstance(coded, Path)
    coding = coding_from(coded, weights=eb // 2) if engine_coding else None  # bf16 weights
    if coding is not None:
        coded_variants = [
            (CODED, Timeline(**{**tl.__dict__, "coding": coding})),
            (ROWS16, Timeline(**{**tl.__dict__, "coding": Coding(**{**coding.__dict__, "staging": 16})})),
            (
                HOST_AS_PLAIN,
                Timeline(**{**tl.__dict__, "coding": Coding(**{**coding.__dict__, "host_extra_ms": 0.0})}),
            ),
        ]
        after_coded = Timeline(**{**after_tl.__dict__, "coding": coding})
    elif coded is not None:
        coded_variants = [(CODED, tl)]  # fewer bytes (the Clock's expert size below), decoding free
    rows = []
    for f in fractions:
        slots = max(w.top_k, round(f * w.total_experts))
        for ev in evictions:
            for name, pr in runs.items():
                variants = [("", tl)]
                if name in HYBRID_POLICIES:
                    variants.append((" + hybrid", hybrid_tl))
                if pr.shift > 0 and ev == "lru":
                    variants.append((AFTER_DEMAND, after_tl))
                if coded is not None and (name in CODED_POLICIES or "@" in name):
                    variants += coded_variants
                    if engine_coding and pr.shift > 0:  # both evictions: LFU + after demand + coded
                        variants.append((AFTER_DEMAND + CODED, after_coded))
                trained = predict_ms and pr.name not in ("none", "oracle")
                for suffix, clock_tl in variants:
                    if trained:
                        clock_tl = Timeline(**{**clock_tl.__dict__, "predict_ms": predict_ms})
                    bytes_only = suffix == CODED and not engine_coding
                    size = (
                        eb * coded if bytes_only else eb
                    )  # bytes-only coded copies: fewer bytes, decoding free
                    clock = Clock(w.num_layers, size, clock_tl, w.top_k)
                    c = replay(w, slots, ev, pr, preload_full=False, events=clock)
                    m = by_eviction.get(ev, {}).get((f, name + suffix))  # the engine's run of it, if any
                    if bytes_only or suffix == " + hybrid":  # the engine's coded / hybrid runs are not these
                        m = None
                    rows.append(
                        {"fraction": f, "eviction": ev, "slots": slots, "policy": name + suffix,
                         "hybrid": suffix == " + hybrid", "after_demand": suffix.startswith(AFTER_DEMAND),
                         "coded": CODED in suffix,
                         "hit_rate": 1 - sum(c.misses) / max(1, sum(c.requests)),
                         "model_ms": clock.ms(w.steps), "engine_ms": 1e3 / m[0] if m else None,
                         "copies_per_token": (sum(c.misses) + sum(c.prefetch_issued)) / w.steps}
                    )  # fmt: skip
    for r in rows:  # over LRU's none at the same cache: what the eviction and the policy give together
        none = next(
            x for x in rows if (x["fraction"], x["eviction"], x["policy"]) == (r["fraction"], "lru", "none")
        )
        r["model_ratio_to_none"] = none["model_ms"] / r["model_ms"]
        r["engine_ratio_to_none"] = (
            none["engine_ms"] / r["engine_ms"] if r["engine_ms"] and none["engine_ms"] else None
        )
    return {
        "kind": "twin_timeline",
        "shape": shape,
        "routing": f"twin-replayed ({twin.name}; twin {artefact['twin_fingerprint'][:16]})",
        "command": "python " + " ".join(sys.argv),
        "tokens": w.steps,
        "decode_record": decode.get("command"),
        "engine_calls": calls,
        "hybrid_host_ms": host_ms,
        "clock": {**tl.__dict__, "fit": f"none at {100 * fit_fraction:g}% = {target:.2f} ms (the engine's)", "source": where,
                  "predict_ms_trained": predict_ms},
        "expert_bytes": eb,
        "coded_ratio": coded if isinstance(coded, float) else None,
        "coding": coding.__dict__ if coding is not None else None,
        "seconds": round(time.monotonic() - t0, 1),
        "rows": rows,
    }  # fmt: skip


def _calls_note(calls: dict, lfu_measured: bool) -> str:
    """A warning when the LFU engine rows are divided by an LRU `none` of another device call."""
    from datetime import datetime

    if not lfu_measured:
        return ""
    if calls.get("lru") and calls.get("lfu"):
        a, b = (datetime.strptime(calls[k][:19], "%Y-%m-%d %H:%M:%S") for k in ("lru", "lfu"))
        if abs((a - b).total_seconds()) < 600:  # one device call runs at most 10 minutes
            return ""
    return (
        " The LFU engine rows come from another device call than the LRU ones (or from records that do not say "
        "when they started), so their engine ratio crosses calls, across which `none` moved by up to ~10%."
    )


def _coding_note(c: dict) -> str:
    return (
        "`coded`: the engine's coded copies (MOE_CODED_EXPERTS) as measured on the H200 (bench/results/"
        f"coded_experts.json): a code's copy {c['copy_share']:.3f} of a plain expert's time, {c['staging']} "
        f"staging rows, each batch of copies decoded in launches of {c['group']} codes "
        f"({c['decode_base_ms']:.3f} ms + {c['decode_per_expert_ms']:.4f} ms a code), the host "
        f"{c['host_extra_ms']:.3f} ms more a copy than a plain one; `coded, 16 rows`: double-buffered staging "
        "rows (a batch copies while the one before decodes); `coded, host as plain`: no extra host time a copy "
        "(neither is built). "
    )


def write_md(doc: dict, path: Path) -> None:
    c = doc["clock"]
    head = (
        "| cache | eviction | policy | hit | copies / token | model ms/tok | × LRU none (model) | engine ms/tok "
        "| × LRU none (engine) |"
    )
    lines = [
        f"# The per-layer clock on the {doc['shape']} twin's routing",
        "",
        f"Routing: {doc['routing']}, {doc['tokens']} tokens as batch-1 segmented decode steps, LRU. Clock: resident "
        f"step {c['step_ms']:.2f} ms split {c['attention_share']:.0%} attention, one copy engine at "
        f"{c['bandwidth_gbs']:.1f} GB/s, the host's decision at each segment boundary {c['decision_ms']:.3f} ms, "
        + (
            f"a trained tap's predictor in line {c['predict_ms_trained']:.4f} ms, "
            if c.get("predict_ms_trained")
            else ""
        )
        + f"fitted: {c['fit']} ({c['source']}). `oracle+d`: the oracle issued d MoE layers ahead (MOE_ORACLE_AHEAD). "
        + (
            f"`+ hybrid`: hybrid misses (MOE_HYBRID_MISSES), the host computing part of each layer's demand misses "
            f"at {doc['hybrid_host_ms']:.3f} ms per expert (the H200 host's measured rate, scaled by bytes, slowed "
            "30% while copies run; the engine's split rule; its `copies / token` are the misses, of which the "
            "host computes part). "
            if "hybrid_host_ms" in doc
            else ""
        )
        + (
            f"`coded`: every copy {doc['coded_ratio']:g} of an expert's bytes (the experts' exponents "
            "Huffman-coded for the copy, lossless: bench/expert_entropy.py; the GPU's decoding taken as free). "
            if doc.get("coded_ratio")
            else ""
        )
        + (_coding_note(doc["coding"]) if doc.get("coding") else "")
        + "Engine columns: the twin-replayed decode runs of the same twin (LRU and LFU sweeps) where they measured "
        "that configuration; both ratios are over LRU's `none` at the same cache."
        + _calls_note(
            doc.get("engine_calls", {}), any(r["eviction"] == "lfu" and r["engine_ms"] for r in doc["rows"])
        ),
        "",
        head,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        eng = "—" if r["engine_ms"] is None else f"{r['engine_ms']:.2f}"
        er = "—" if r["engine_ratio_to_none"] is None else f"{r['engine_ratio_to_none']:.2f}"
        lines.append(
            f"| {100 * r['fraction']:g}% | {r['eviction']} | `{r['policy']}` | {100 * r['hit_rate']:.1f}% | "
            f"{r['copies_per_token']:.1f} | "
            f"{r['model_ms']:.2f} | {r['model_ratio_to_none']:.2f} | {eng} | {er} |"
        )
    lines += ["", "```bash", doc["command"], "```", ""]
    path.write_text("\n".join(lines))


def _coded_arg(value: str | None) -> float | Path | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return Path(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--twin", type=Path, default=ROOT / "bench" / "twins" / "twin_replay_deepseek-v2-lite.json"
    )
    ap.add_argument(
        "--decode", type=Path, default=ROOT / "bench" / "results", help="decode_<shape>_twin.json"
    )
    ap.add_argument("--fractions", default="0.25,0.5,0.75")
    ap.add_argument("--fit-fraction", type=float, default=0.5)
    ap.add_argument("--attention-share", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=None, help="replay only the artefact's first N tokens")
    ap.add_argument(
        "--coded",
        default=None,
        help="also run none, exact+d and oracle+d with copies of this share of an expert's bytes (losslessly "
        "coded experts: 0.667 from bench/expert_entropy.py), the GPU's decoding taken as free; or, given "
        "bench/results/coded_experts.json, with the engine's coded copy path as measured there",
    )
    ap.add_argument(
        "--decode-kind",
        default="twin",
        help="the decode record fitted to: decode_<shape>_<kind>.json (twin, or coded_lru from "
        "bench/gpu_coded_session.sh; its LFU counterpart is read beside it)",
    )
    ap.add_argument("--evictions", default="lru,lfu")
    ap.add_argument(
        "--widths",
        default="",
        help="also each lookahead bank's top-m for these m (overprovision@m+d: MOE_POLICY=overprovision "
        "MOE_OVERPROVISION=m with a bundle of distance d; m below k issues fewer, surer copies)",
    )
    ap.add_argument("--only", default="", help="play only these configurations (and none), comma-separated")
    ap.add_argument(
        "--predict-ms",
        type=float,
        default=0.0,
        help="a trained tap's predictor in line, ms (segmented steps; 0.0325 measured on the DeepSeek twin)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    if args.fit_fraction not in fractions:
        raise SystemExit("--fit-fraction must be one of --fractions")
    doc = run(
        args.twin,
        args.decode,
        fractions,
        args.fit_fraction,
        args.attention_share,
        args.tokens,
        tuple(args.evictions.split(",")),
        _coded_arg(args.coded),
        args.decode_kind,
        [int(m) for m in args.widths.split(",") if m],
        [p for p in args.only.split(",") if p],
        args.predict_ms,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"timeline_{doc['shape'].replace('-', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc, stem.with_suffix(".md"))
    print(f"wrote {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
