"""Where a grammar-constrained decode step's time goes (issue #18): the engine in-process, its methods timed.

    python bench/grammar_profile.py --checkpoint .cache/grammar_cost/ckpt --device cuda --out bench/results
    python bench/grammar_profile.py --device cpu --tokens 24 --out /tmp/gp       # the built-in model, CPU

`bench/grammar_cost.py` measures what the grammar costs a served token (1.13-1.19x at batch 1, 1.32-1.35x at
batch 8 on an H200); this says where. It loads `AsyncEngine` in this process on a checkpoint (default: the
built-in model), every expert resident, and runs `--streams` greedy generations of `--tokens` tokens at once,
unconstrained and with a JSON schema, `--runs` rounds each, after a warm-up. The engine's own methods are
wrapped with host timers (`time.perf_counter`, no device sync added, so the step runs as it does in serving):
- `round`: one scheduling round (`AsyncEngine._round`: the decode step and every row's token);
- `decode`: launching the batched decode step (`runner.decode`);
- `masks`: the batch's grammar masks after the launch (`_batch_masks`), of which `fill` is llguidance filling
  the bitmask words (`BatchMasks._fill`) and the rest the words' copy to the device and their expansion
  (the copy from pageable memory waits for the step already queued on the stream);
- `accept`: every row's masking, sampling (one host sync each), grammar advance and detokenising.
Per condition and batch: the median per round of each, in microseconds, and the ratio of `round` to the
unconstrained one. Writes `<out>/grammar_profile.json`. Imports the engine and `bench.grammar_cost` (the
schema) only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.grammar_cost import PROMPTS, SCHEMA  # noqa: E402
from engine.api.config import EngineConfig  # noqa: E402
from engine.api.protocol import Constraint, GenerationRequest, SamplingParams  # noqa: E402
from engine.frontend.async_engine import AsyncEngine  # noqa: E402

PARTS = ("round", "decode", "masks", "fill", "accept")


class Timers:
    """Host time per part, summed within a round and kept per round."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.rounds: list[dict[str, float]] = []

    def wrap(self, obj, attr: str, part: str, closes_round: bool = False) -> None:
        fn = getattr(obj, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.current[part] += time.perf_counter() - t0
                if closes_round:
                    self.rounds.append(dict(self.current))
                    self.current.clear()

        setattr(obj, attr, timed)


async def stream(engine: AsyncEngine, i: int, tokens: int, constrained: bool) -> int:
    params = SamplingParams(
        max_tokens=tokens,
        temperature=0.0,
        ignore_eos=not constrained,  # a finished grammar ends its stream; otherwise run the full length
        constraint=Constraint(kind="json", schema=json.dumps(SCHEMA)) if constrained else None,
    )
    req = GenerationRequest(
        f"p{i}-{time.monotonic_ns()}", params, messages=({"role": "user", "content": PROMPTS[i % 8]},)
    )
    n = 0
    async for delta in engine.generate(req):
        n += len(delta.token_ids)
    return n


async def condition(engine, timers: Timers, streams: int, tokens: int, constrained: bool) -> dict:
    timers.rounds.clear()
    t0 = time.perf_counter()
    made = await asyncio.gather(*(stream(engine, i, tokens, constrained) for i in range(streams)))
    wall = time.perf_counter() - t0
    full = [r for r in timers.rounds if r.get("decode")]  # rounds that ran a decode step
    if streams > 1:  # the rounds with every stream in the batch (not the ramp up or the tail)
        full = full[streams:-streams] or full
    med = {p: 1e6 * statistics.median([r.get(p, 0.0) for r in full]) for p in PARTS} if full else {}
    return {"tokens": sum(made), "wall_s": round(wall, 3), "rounds": len(full), "median_us": med}


async def run(args) -> dict:
    cfg = EngineConfig(
        model=str(args.checkpoint) if args.checkpoint else None,
        device=args.device,
        expert_cache_fraction=1.0,
        max_running=max(args.streams),
    )
    engine = AsyncEngine.from_config(cfg)
    await asyncio.to_thread(engine.load)
    await engine.start()
    timers = Timers()
    timers.wrap(engine, "_round", "round", closes_round=True)
    timers.wrap(engine.runner, "decode", "decode")
    timers.wrap(engine, "_batch_masks", "masks")
    timers.wrap(engine, "_accept", "accept")
    if engine._masks is not None:
        timers.wrap(engine._masks, "_fill", "fill")
    out = {"records": []}
    try:
        for s in args.streams:  # warm-up: graphs of each batch size, each grammar compiled once
            for constrained in (False, True):
                await condition(engine, timers, s, min(16, args.tokens), constrained)
        for rnd in range(args.runs):
            for s in args.streams:
                for constrained in (False, True):
                    rec = await condition(engine, timers, s, args.tokens, constrained)
                    rec |= {"round": rnd, "streams": s, "format": "json_schema" if constrained else "none"}
                    out["records"].append(rec)
                    m = rec["median_us"]
                    print(
                        f"round {rnd} streams {s} {rec['format']}: "
                        + ", ".join(f"{p} {m.get(p, 0):.0f} us" for p in PARTS),
                        flush=True,
                    )
    finally:
        await engine.shutdown()
    out["summary"] = summarise(out["records"], args.streams)
    out["vocab_size"] = engine.model_card.vocab_size
    return out


def summarise(records: list[dict], streams: list[int]) -> dict:
    out = {}
    for s in streams:
        row = {}
        for fmt in ("none", "json_schema"):
            rs = [r for r in records if r["streams"] == s and r["format"] == fmt and r["median_us"]]
            row[fmt] = (
                {p: round(statistics.median(r["median_us"][p] for r in rs), 1) for p in PARTS} if rs else {}
            )
        if row["none"] and row["json_schema"]:
            row["round_ratio"] = round(row["json_schema"]["round"] / row["none"]["round"], 3)
            row["extra_us"] = {p: round(row["json_schema"][p] - row["none"][p], 1) for p in PARTS}
        out[str(s)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the built-in)"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    doc = {"kind": "grammar_profile", "command": "python " + " ".join(sys.argv), "device": args.device}
    doc |= asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grammar_profile.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["summary"], indent=1))


if __name__ == "__main__":
    main()
