"""What grammar-constrained decoding costs a served decode step, on a GPU, at batch 1 and 8.

    python bench/grammar_cost.py --layers 4 --tokenizer /path/to/151k/tokenizer.json --out bench/results

Writes a random-weight Qwen3-30B-A3B-width checkpoint (`bench/soak_checkpoint.py`, optionally with another
tokenizer: the mask's cost grows with the vocabulary, and Qwen3's has 151,936 ids), serves it fully resident
(`MOE_EXPERT_CACHE_FRACTION=1`, so expert copies do not blur the step), and streams chat completions of
`--tokens` tokens through the `openai` SDK, `--streams` at once, without a grammar, with
`response_format: json_object` and with a `json_schema`. Conditions alternate, `--runs` rounds each; the
time per output token of a stream is (last token - first token) / (tokens - 1), and a condition's figure is
the median over its streams and rounds. The ratio to the unconstrained figure of the same batch size, in the
same run, is the grammar's cost. The server's `moe_request_time_per_output_token_seconds` (sum / count over
the condition) is recorded beside it. Output: grammar_cost.json (and .log) under --out.

Routing is random-weight (it does not matter here: every expert is resident).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_record import Run  # noqa: E402
from bench.soak_server import Server, gpu_name  # noqa: E402
from bench.soak_stats import parse_prometheus  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "number"}},
    },
    "required": ["title", "year", "tags", "scores"],
    "additionalProperties": False,
}
FORMATS = {
    "none": None,
    "json_object": {"type": "json_object"},
    "json_schema": {
        "type": "json_schema",
        "json_schema": {"name": "record", "schema": SCHEMA, "strict": True},
    },
}
PROMPTS = [
    "Describe a book you like as JSON.",
    "Give me a JSON record of a film with tags and scores.",
    "Summarise the history of the printing press.",
    "Write the details of a concert as a JSON object.",
    "List facts about the river Danube.",
    "Return a JSON description of a painting.",
    "What happened in the year 1066?",
    "Describe a city as a JSON record.",
]
TPOT = "moe_request_time_per_output_token_seconds"


def build(args, log: Path) -> Path:
    ckpt = args.work / f"grammar-qwen3-l{args.layers}-{'tok' if args.tokenizer else 'builtin'}"
    cmd = [sys.executable, str(ROOT / "bench" / "soak_checkpoint.py"), "--shape", "qwen3",
           "--layers", str(args.layers), "--dtype", "bfloat16", "--device", args.device, "--out", str(ckpt)]  # fmt: skip
    if args.tokenizer:
        cmd += ["--tokenizer", str(args.tokenizer)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    with log.open("w") as fh:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"checkpoint build failed:\n{log.read_text()[-3000:]}")
    return ckpt


def tpot_sums(text: str) -> tuple[float, float]:
    samples = parse_prometheus(text)
    total = sum(v for (n, _), v in samples.items() if n == TPOT + "_sum")
    count = sum(v for (n, _), v in samples.items() if n == TPOT + "_count")
    return total, count


async def one_stream(client, prompt: str, fmt, tokens: int, model: str) -> dict:
    extra = {"response_format": fmt} if fmt is not None else {}
    times: list[float] = []
    usage = None
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0.0,
        stream=True, stream_options={"include_usage": True}, **extra,
    )  # fmt: skip
    text = []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                times.append(time.perf_counter())
                text.append(choice.delta.content)
    n = usage.completion_tokens if usage else len(times)
    tpot = (times[-1] - times[0]) / (n - 1) if len(times) >= 2 and n > 1 else None
    out = {"tokens": n, "ttft_s": (times[0] - t0) if times else None, "tpot_s": tpot}
    if fmt is not None:
        body = "".join(text)
        try:
            json.loads(body)
            out["valid_json"] = True
        except ValueError:
            out["valid_json"] = False  # a stream cut at max_tokens is a prefix of valid JSON
    return out


async def measure(base: str, args, run: Run) -> list[dict]:
    import httpx
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base + "/v1", api_key="x", timeout=300.0, max_retries=0)
    model = (await client.models.list()).data[0].id
    records = []
    async with httpx.AsyncClient(timeout=30.0) as http:
        # warm-up: capture the decode graphs of every batch size used, and compile each grammar once
        for fmt in FORMATS.values():
            await asyncio.gather(
                *(one_stream(client, PROMPTS[i % 8], fmt, 32, model) for i in range(max(args.streams)))
            )
            await one_stream(client, PROMPTS[0], fmt, 32, model)
        for rnd in range(args.runs):
            for streams in args.streams:
                for name, fmt in FORMATS.items():
                    before = tpot_sums((await http.get(base + "/metrics")).text)
                    t0 = time.perf_counter()
                    outs = await asyncio.gather(
                        *(
                            one_stream(client, PROMPTS[(rnd + i) % 8], fmt, args.tokens, model)
                            for i in range(streams)
                        )
                    )
                    wall = time.perf_counter() - t0
                    after = tpot_sums((await http.get(base + "/metrics")).text)
                    ds, dc = after[0] - before[0], after[1] - before[1]
                    rec = {
                        "round": rnd, "streams": streams, "format": name, "wall_s": round(wall, 3),
                        "tokens": sum(o["tokens"] for o in outs),
                        "tpot_s": [o["tpot_s"] for o in outs],
                        "server_tpot_mean_s": ds / dc if dc else None,
                        "valid_json": [o.get("valid_json") for o in outs] if fmt is not None else None,
                    }  # fmt: skip
                    records.append(rec)
                    med = statistics.median([t for t in rec["tpot_s"] if t is not None] or [float("nan")])
                    run.say(
                        f"round {rnd} streams {streams} {name}: {rec['tokens']} tokens, tpot {med * 1e3:.2f} ms"
                    )
                    run.put("records", records)
    await client.close()
    return records


def summarise(records: list[dict], streams: list[int]) -> dict:
    out = {}
    for s in streams:
        row = {}
        for name in FORMATS:
            tp = [t for r in records if r["streams"] == s and r["format"] == name for t in r["tpot_s"] if t]
            sv = [r["server_tpot_mean_s"] for r in records if r["streams"] == s and r["format"] == name]
            toks = [r["tokens"] for r in records if r["streams"] == s and r["format"] == name]
            row[name] = {
                "tpot_median_ms": round(1e3 * statistics.median(tp), 3) if tp else None,
                "server_tpot_mean_ms": round(1e3 * statistics.median([x for x in sv if x]), 3)
                if any(sv)
                else None,
                "tokens_per_round": toks,
            }
        base = row["none"]["tpot_median_ms"]
        for name in FORMATS:
            t = row[name]["tpot_median_ms"]
            row[name]["ratio_to_none"] = round(t / base, 3) if t and base else None
        out[str(s)] = row
    return out


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer.json (default: the built-in)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "grammar_cost")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    info = {
        "kind": "grammar_cost", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.node(), "gpu": gpu_name() if args.device.startswith("cuda") else None, "routing": "random weights, every expert resident",
        "shape": f"qwen3-30b-a3b width, {args.layers} layers, bf16", "tokens": args.tokens,
        "schema": SCHEMA,
    }  # fmt: skip
    run = Run(args.out, "grammar_cost", info, t_start)
    ckpt = build(args, args.out / "grammar_cost_build.log")
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    run.put("vocab_size", vocab, phase="build")
    env = {"MOE_MODEL": str(ckpt), "MOE_DEVICE": args.device, "MOE_DTYPE": "bfloat16", "MOE_POLICY": "none",
           "MOE_EXPERT_CACHE_FRACTION": "1.0", "MOE_MAX_RUNNING": str(max(args.streams)),
           "MOE_MAX_MODEL_LEN": "1024", "MOE_LOG_LEVEL": "info"}  # fmt: skip
    server = Server(env, args.out / "grammar_cost_server.log")
    server.start(timeout=300)
    run.put("server_start_s", round(server.started_s or 0, 1), phase="start")
    try:
        records = asyncio.run(measure(server.base, args, run))
    finally:
        code, killed = server.stop()
    run.put("summary", summarise(records, args.streams), phase="measure")
    run.put("server_exit", {"code": code, "killed": killed})
    for s, row in run.data["summary"].items():
        run.say(
            f"batch {s}: "
            + ", ".join(f"{n} {v['tpot_median_ms']} ms ({v['ratio_to_none']}x)" for n, v in row.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
