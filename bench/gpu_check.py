"""GPU check of the engine foundation: a random-weight model of a real model's shape, built on the GPU,
experts in pinned host memory, cache at 100% and 25%: equal outputs, expert-load bandwidth, decode speed.

    python bench/gpu_check.py --preset qwen3-30b-a3b --out bench/results/gpu_check.json

Prints a short table and writes JSON. Timings are medians of several runs; the machine is named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pinned_bandwidth  # noqa: E402
from engine.model.loader import CacheBudget, build_synthetic, replace_cache  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402
from engine.runner.runner import ModelRunner, SequenceState  # noqa: E402


def expert_load_bandwidth(om, n: int = 256, reps: int = 5) -> dict:
    """Copy n experts host->device through the cache's own copy path; GB/s from CUDA events."""
    cache = om.cache
    n = min(n, cache.capacity)
    keys = [(layer, e) for layer in range(len(om.layers)) for e in range(om.store.layout.num_experts)][:n]
    results = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(cache.copy_stream)
        for slot, key in enumerate(keys):
            with torch.cuda.stream(cache.copy_stream):
                cache.pool[slot].copy_(om.store.row(*key), non_blocking=True)
        b.record(cache.copy_stream)
        b.synchronize()
        results.append(a.elapsed_time(b) / 1e3)
    t = statistics.median(results)
    return {
        "experts": n,
        "expert_bytes": om.store.layout.nbytes,
        "median_s": t,
        "gb_per_s": n * om.store.layout.nbytes / t / 1e9,
        "ms_per_expert": 1e3 * t / n,
    }


def greedy_with_logits(runner: ModelRunner, prompt: list[int], n: int):
    state = SequenceState()
    logits = runner.forward(state, prompt)
    toks, all_logits = [], [logits.float().cpu()]
    for _ in range(n):
        tok = int(torch.argmax(logits))
        toks.append(tok)
        logits = runner.forward(state, [tok])
        all_logits.append(logits.float().cpu())
    return toks, torch.stack(all_logits)


def decode_speed(runner: ModelRunner, prompt: list[int], n: int, runs: int) -> dict:
    per_tok = []
    for _ in range(runs):
        state = SequenceState()
        logits = runner.forward(state, prompt)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            logits = runner.forward(state, [int(torch.argmax(logits))])
        torch.cuda.synchronize()
        per_tok.append((time.perf_counter() - t0) / n)
    return {
        "ms_per_token_median": 1e3 * statistics.median(per_tok),
        "ms_per_token_min": 1e3 * min(per_tok),
        "ms_per_token_max": 1e3 * max(per_tok),
        "tokens_per_s": 1 / statistics.median(per_tok),
        "runs": runs,
        "tokens": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda")
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "preset": args.preset,
    }
    import transformers

    report["transformers"] = transformers.__version__
    report["pinned_copy_256MB"] = pinned_bandwidth(256 * 2**20)
    t0 = time.perf_counter()
    om = build_synthetic(
        preset_config(args.preset), dev, torch.bfloat16, CacheBudget(fraction=1.0), seed=0, name=args.preset
    )
    torch.cuda.synchronize()
    report["build_s"] = time.perf_counter() - t0
    report["store_gb"] = om.store.nbytes / 1e9
    report["store_pinned"] = om.store.pinned
    report["experts_total"] = om.store.total_experts
    report["device_mem_after_build_gb"] = torch.cuda.memory_allocated() / 1e9
    print(
        f"built in {report['build_s']:.1f}s: {om.store.total_experts} experts, {report['store_gb']:.1f} GB pinned",
        flush=True,
    )
    prompt = torch.randint(
        0, om.model.config.vocab_size, (64,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    results = {}
    for frac in (1.0, 0.25):
        if frac != 1.0:
            replace_cache(om, CacheBudget(fraction=frac))
        runner = ModelRunner(om)
        toks, logits = greedy_with_logits(runner, prompt, args.tokens)
        runner.after_step()
        totals = om.counters.totals()
        if frac == 1.0:
            report["expert_load_bandwidth"] = expert_load_bandwidth(om)
        speed = decode_speed(runner, prompt, args.tokens, args.runs)
        results[frac] = {
            "tokens": toks,
            "logits": logits,
            "counters": totals,
            "speed": speed,
            "slots": om.cache.capacity,
        }
        print(
            f"cache {frac:.0%}: {om.cache.capacity} slots, {speed['tokens_per_s']:.2f} tok/s, misses {totals['misses']}",
            flush=True,
        )
    same = results[1.0]["tokens"] == results[0.25]["tokens"]
    max_diff = float((results[1.0]["logits"] - results[0.25]["logits"]).abs().max())
    report["equal_greedy_tokens_100_vs_25"] = same
    report["max_abs_logit_diff_100_vs_25"] = max_diff
    report["caches"] = {
        f"{int(f * 100)}%": {k: v for k, v in r.items() if k != "logits"} for f, r in results.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    bw = report["expert_load_bandwidth"]
    print(
        f"device {report['device']}; pinned copy {report['pinned_copy_256MB']['gb_per_s']:.1f} GB/s; "
        f"expert loads {bw['gb_per_s']:.1f} GB/s ({bw['ms_per_expert']:.3f} ms / {bw['expert_bytes'] / 1e6:.1f} MB expert)"
    )
    print(f"equal greedy tokens 100% vs 25%: {same}; max |logit diff| {max_diff:.3g}")


if __name__ == "__main__":
    main()
