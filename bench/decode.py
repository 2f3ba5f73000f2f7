"""Decode and prefill speed of the engine under every prefetch policy and cache size, against the plain
transformers forward, on a random-weight model of a real shape, on one GPU.

    python bench/decode.py --preset qwen3-30b-a3b --prompts .cache/mmlu --out bench/results

One run does everything on one GPU and reports medians of `--runs` runs with min and max:
1. builds the model on the device (experts in pinned host memory) and measures host->device and
   device-memory bandwidth;
2. collects routing traces over MMLU prompts spread over every subject (the last 80 prompts, whose text
   the decode runs feed, are never traced) and trains Arch-2 predictors on them (the model's own
   traces, a few epochs); with `--predictor-report`, both paper pairings with the full evaluation
   table (baselines included), as `bench/predictors_gpu.py` does;
3. the plain transformers forward (every expert on the GPU, transformers' default experts code,
   DynamicCache), batch 1 — skipped when the weights do not fit on the GPU;
4. the engine with every expert resident (one CUDA graph per step), its eager path, and the slot
   GEMV's torch fallback, with the HBM floor (active bytes / device bandwidth);
5. per cache size and policy: tokens/s, hit rate, stall ms per token, bytes per token, wasted prefetch,
   online recall, prediction latency, and the PCIe floor (bytes copied / host->device bandwidth +
   the resident time per token); `oracle` replays the routing recorded under `none`;
6. prefill tokens/s of a `--prefill-tokens` prompt at the smallest cache;
7. a profiler trace of a few decode steps: how much expert-copy time ran while compute kernels ran.

Decode is teacher-forced: each step feeds the text's next token (a random-weight model's own greedy
text repeats one token, which would route every step to the same experts); each run decodes its own
stretch of text, the way a server sees different requests. The argmax of every step is recorded to
check that outputs never change across policies, cache sizes and paths.

Results: JSON (rewritten after every configuration, so a cut-off run keeps what it measured) and a
PNG of tokens/s against cache size, one line per policy. `--smoke` runs a shrunken shape on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    active_bytes_per_token,
    device_bandwidth,
    device_name,
    pinned_bandwidth,
    plain_batched,
    plain_decode,
    throughput,
)
from engine.api.config import EngineConfig  # noqa: E402
from engine.api.policies import POLICIES  # noqa: E402
from engine.experts.hooks import Listener  # noqa: E402
from engine.model.builtin import builtin_tokenizer  # noqa: E402
from engine.model.loader import CacheBudget, build_synthetic, replace_cache  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402
from engine.prefetch.build import build_prefetcher  # noqa: E402
from engine.prefetch.routing_trace import RoutingRecorder  # noqa: E402
from engine.runner.runner import ModelRunner  # noqa: E402
from predictors.collect import collect, read_prompts  # noqa: E402
from predictors.fingerprint import model_fingerprint  # noqa: E402
from predictors.traces import TraceSet  # noqa: E402
from predictors.train import train_bank  # noqa: E402

PROMPT_TOKENS = 64
SMOKE = dict(
    num_hidden_layers=3,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=16,
    num_experts_per_tok=2,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stalls:
    total = 0.0

    def add(self, s: float) -> None:
        self.total += s


STALLS = _Stalls()


class Workload:
    """A warm-up and `runs` measured runs, each: prefill a prompt into KV row 0, then decode steps that
    feed the text's next tokens one at a time. The whole sequence of calls is what `oracle` replays."""

    def __init__(self, runner: ModelRunner, segments: list[tuple[list[int], list[int]]]) -> None:
        self.runner, self.segments = runner, segments  # [(prompt, fed tokens)], the first one warms up
        self.device = runner.device

    def one(self, prompt: list[int], feed: list[int]) -> dict:
        om, runner = self.runner.om, self.runner
        sync(self.device)
        t0 = time.perf_counter()
        logits = runner.prefill(0, prompt)
        sync(self.device)
        t_prefill = time.perf_counter() - t0
        runner.after_step()
        before = om.counters.totals()
        stall0 = STALLS.total
        pos = len(prompt)
        t0 = time.perf_counter()
        argmax = []
        for tok in feed:
            argmax.append(torch.argmax(logits))  # kept on the device: no sync inside the timed loop
            logits = runner.decode([tok], [pos])[0]
            pos += 1
        sync(self.device)
        t_decode = time.perf_counter() - t0
        runner.after_step()
        after = om.counters.totals()
        return {
            "prefill_s": t_prefill,
            "decode_s": t_decode,
            "tokens": [int(t) for t in argmax],
            "delta": {k: after[k] - before[k] for k in after},
            "stall_s": STALLS.total - stall0,
        }

    def run(self) -> list[dict]:
        self.one(*self.segments[0])  # warm-up: captures graphs, fills the cache as a running server's is
        return [self.one(*seg) for seg in self.segments[1:]]


def summarise(runs: list[dict], prompt_len: int, bw: float | None) -> dict:
    new = len(runs[0]["tokens"])
    tok_s = [new / r["decode_s"] for r in runs]
    d = {k: sum(r["delta"][k] for r in runs) for k in runs[0]["delta"]}
    n = new * len(runs)
    req = max(1, d["requests"])
    # the bytes a step needs over PCIe: copies made for it (prefetch, demand) and weights its kernels read
    # from host memory (streamed steps); the fills behind streamed steps are counted apart
    bytes_tok = (d["bytes_prefetch"] + d["bytes_demand"] + d.get("bytes_host_read", 0)) / n
    fill_tok = d.get("bytes_fill", 0) / n
    out = {
        "tok_s": tok_s,
        "tok_s_median": statistics.median(tok_s),
        "tok_s_min": min(tok_s),
        "tok_s_max": max(tok_s),
        "ms_per_token_median": 1e3 / statistics.median(tok_s),
        "prefill_tok_s_median": statistics.median(prompt_len / r["prefill_s"] for r in runs),
        "hit_rate": (d["hits_resident"] + d["hits_prefetched"]) / req,
        "prefetch_hit_rate": d["hits_prefetched"] / req,
        "misses_per_token": d["misses"] / n,
        "stall_ms_per_token": 1e3 * sum(r["stall_s"] for r in runs) / n,
        "bytes_per_token": bytes_tok,
        "demand_bytes_per_token": d["bytes_demand"] / n,
        "host_read_bytes_per_token": d.get("bytes_host_read", 0) / n,
        "fill_bytes_per_token": fill_tok,
        "prefetch_issued_per_token": d["prefetch_issued"] / n,
        "wasted_per_token": d["prefetch_wasted"] / n,
        "wasted_ratio": d["prefetch_wasted"] / d["prefetch_issued"] if d["prefetch_issued"] else None,
        "online_recall": d["predicted_routed"] / d["routed_scored"] if d["routed_scored"] else None,
        "tokens": [r["tokens"] for r in runs],
    }
    if bw:
        out["pcie_ms_per_token"] = 1e3 * bytes_tok / bw
        out["pcie_ms_per_token_with_fills"] = 1e3 * (bytes_tok + fill_tok) / bw
    return out


def fresh_recall(bank, report, traces, om, tok, texts: list[str], work: Path, args) -> dict:
    """Offline metrics of the bank on traces of the benchmark's own (never traced) text: what the
    online recall should come close to if the decode path feeds the predictor what collection saw."""
    from predictors.bundle import bundle_manifest
    from predictors.evaluate import evaluate

    fresh_dir = work / "fresh_traces"
    collect(
        om.model,
        tok,
        texts,
        fresh_dir,
        max_samples=4000,
        max_prompt_tokens=args.prompt_tokens,
        progress=False,
        resume=False,
    )
    result = evaluate(
        bank,
        bundle_manifest(traces.manifest, report),
        TraceSet(fresh_dir),
        split="all",
        device=str(om.device),
        latency_iters=5,
    )
    return {
        m: {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
        for m, row in result["overall"].items()
    }


def train_predictors(
    om, tok, prompts: list[str], work: Path, args, out: Path, tag: str, fresh: list[str]
) -> tuple:
    traces_dir = work / "traces"
    t0 = time.perf_counter()
    collect(
        om.model,
        tok,
        prompts,
        traces_dir,
        max_samples=args.samples,
        max_prompt_tokens=args.prompt_tokens,
        progress=False,
        resume=False,
    )
    traces = TraceSet(traces_dir)
    t_collect = time.perf_counter() - t0
    log(f"traces: {traces.summary()} in {t_collect:.0f}s")
    info = {
        "collect_s": t_collect,
        "traces": traces.summary(),
        "epochs": args.epochs,
        "hidden": args.predictor_hidden,
    }
    pairs = [(2, "wbce"), (1, "rank_bce")] if args.predictor_report else [(2, "wbce")]
    bank2 = None
    for arch, loss in pairs:
        t0 = time.perf_counter()
        bank, report = train_bank(
            traces,
            arch,
            loss,
            epochs=args.epochs,
            device=str(om.device),
            progress=False,
            hidden=args.predictor_hidden,
        )
        t_train = time.perf_counter() - t0
        log(
            f"predictors (arch {arch}, {loss}): held-out {json.dumps(report['heldout_mean'])[:300]} in {t_train:.0f}s"
        )
        info[f"arch{arch}_{loss}"] = {"train_s": t_train, "heldout_mean": report["heldout_mean"]}
        if args.predictor_report:
            evaluate_bank(bank, report, traces, om, out, tag, f"arch{arch}_{loss}", info)
        if arch == 2:
            bank2 = bank
            if fresh:
                info["fresh_text"] = fresh_recall(bank, report, traces, om, tok, fresh, work, args)
                log(f"arch 2 on the benchmark's own text (offline): {info['fresh_text']}")
    # Module.to works in place: the recall diagnosis needs a float32 copy beside the served-dtype bank
    fp32 = copy.deepcopy(bank2).to(device=om.device).eval()
    return bank2.to(device=om.device, dtype=om.dtype).eval(), fp32, {"loss": "wbce"}, info


def evaluate_bank(bank, report, traces, om, out: Path, tag: str, name: str, info: dict) -> None:
    """The issue-#3 table for one pairing: per layer and overall, with the baselines (see predictors.evaluate)."""
    from rich.console import Console

    from predictors.bundle import bundle_manifest
    from predictors.evaluate import evaluate, plot_result, result_table

    manifest = bundle_manifest(traces.manifest, report)
    result = evaluate(bank, manifest, traces, device=str(om.device))
    plot_result(result, out / f"predictors_{tag}_{name}.png")
    console = Console(record=True, width=160)
    console.print(result_table(result))
    (out / f"predictors_{tag}_{name}.txt").write_text(console.export_text())
    info[name]["evaluation"] = result


def profile_overlap(workload: Workload, work: Path, tag: str) -> dict:
    """Profile a few decode steps; how much host->device copy time overlapped compute kernels."""
    from torch.profiler import ProfilerActivity, profile

    from bench.common import chrome_trace_overlap as overlap

    runner = workload.runner
    prompt, feed = workload.segments[-1]
    runner.prefill(0, prompt)
    pos = len(prompt)
    for tok in feed[:3]:
        runner.decode([tok], [pos])
        pos += 1
    sync(workload.device)
    steps = feed[3:9]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for tok in steps:
            runner.decode([tok], [pos])
            pos += 1
        sync(workload.device)
    runner.after_step()
    path = work / f"profile_{tag}.json"
    prof.export_chrome_trace(str(path))
    res = overlap(json.loads(path.read_text()))
    res["decode_steps"] = len(steps)
    path.unlink()  # tens of MB; the numbers are what we keep
    return res


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_policy: dict[str, list[tuple[float, float, float, float]]] = {}
    for c in result["configs"]:
        if c.get("variant") not in (None, "segmented"):
            continue
        s = c["summary"]
        name = c["policy"] + (" (segmented steps)" if c.get("variant") else "")
        by_policy.setdefault(name, []).append(
            (c["fraction"], s["tok_s_median"], s["tok_s_min"], s["tok_s_max"])
        )
    for policy, pts in by_policy.items():
        pts.sort()
        x = [100 * p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(
            x, y, yerr=err, marker="o", capsize=3, label=policy, ls="--" if "segmented" in policy else "-"
        )
    plain = result.get("plain")
    if plain and "tok_s_median" in plain:
        ax.axhline(
            plain["tok_s_median"], color="gray", ls="--", lw=1, label="plain transformers (all on GPU)"
        )
    ax.set_yscale("log")
    ax.set_xlabel("expert cache (% of all routed experts on the GPU)")
    ax.set_ylabel("decode tokens/s (batch 1; median, min-max bars)")
    ax.set_title(f"{result['preset']} (random weights) on {result['device']}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_ratios(result: dict) -> None:
    """Time per token against `none`, `oracle`, the plain forward and the floors (the issues' targets)."""
    by = {(c["policy"], c["fraction"]): c["summary"] for c in result["configs"] if not c.get("variant")}
    resident = by.get(("none", 1.0))
    plain = result.get("plain", {}).get("tok_s_median")
    ratios = {}
    for c in result["configs"]:
        policy, fraction, s = c["policy"], c["fraction"], c["summary"]
        row = {}
        for base in ("none", "oracle"):
            b = by.get((base, fraction))
            if b:
                row[f"speedup_vs_{base}"] = s["tok_s_median"] / b["tok_s_median"]
                row[f"time_ratio_to_{base}"] = b["tok_s_median"] / s["tok_s_median"]
        if plain:
            row["speedup_vs_plain"] = s["tok_s_median"] / plain
        if resident and "pcie_ms_per_token" in s:
            floor = s["pcie_ms_per_token"] + resident["ms_per_token_median"]
            row["pcie_floor_ms"] = floor
            row["time_ratio_to_pcie_floor"] = s["ms_per_token_median"] / floor
            if "pcie_ms_per_token_with_fills" in s:  # stricter: the fills behind streamed steps count too
                floor_all = s["pcie_ms_per_token_with_fills"] + resident["ms_per_token_median"]
                row["time_ratio_to_pcie_floor_with_fills"] = s["ms_per_token_median"] / floor_all
        key = f"{policy}@{fraction}" + (f"/{c['variant']}" if c.get("variant") else "")
        ratios[key] = row
    if resident and result.get("hbm_floor_ms"):
        ratios["resident_time_ratio_to_hbm_floor"] = resident["ms_per_token_median"] / result["hbm_floor_ms"]
    result["ratios"] = ratios


def run_config(om, runner, workload, bank, manifest, policy, fraction, routing, args, bw):
    cache = replace_cache(om, CacheBudget(fraction=fraction))
    cache.listen(Listener(stall=STALLS.add))
    if fraction >= 1.0:
        cache.load_all()
    recorder = None
    if policy == "none" and not routing.exists():
        recorder = RoutingRecorder(len(om.layers))
        cache.listen(Listener(stall=STALLS.add, route=recorder.record))
    ecfg = EngineConfig(policy=policy, oracle_trace=str(routing) if policy == "oracle" else None)
    latencies: list[float] = []
    pf = build_prefetcher(om, ecfg, bank=bank, manifest=manifest, on_latency=latencies.append)
    runner.invalidate()
    t0 = time.perf_counter()
    try:
        runs = workload.run()
    finally:
        if pf is not None:
            pf.remove()
        runner.invalidate()
    if recorder is not None:
        recorder.save(routing, model_fingerprint(om.model))
        cache.listen(Listener(stall=STALLS.add))
    s = summarise(runs, PROMPT_TOKENS, bw)
    if latencies:
        s["prediction_latency_ms_median"] = 1e3 * statistics.median(latencies)
        s["prediction_latency_ms_p99"] = 1e3 * sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    return s, cache.capacity, time.perf_counter() - t0


def spread(prompts: list[str], n: int) -> list[str]:
    """`n` prompts taken evenly over the list: MMLU files come one subject after another, so the first n
    would all be one subject (a random-weight model routes by token, and predictors trained on algebra
    questions then meet another vocabulary in the benchmark's text)."""
    if n >= len(prompts):
        return list(prompts)
    step = len(prompts) / n
    return [prompts[int(i * step)] for i in range(n)]


def batch_rows(segments: list, batch: int, run: int) -> list:
    """The (prompt, fed tokens) of each row of one batched run: the measured segments, in turn."""
    pool = segments[1:]
    return [pool[(run * batch + b) % len(pool)] for b in range(batch)]


def engine_batched(runner: ModelRunner, segments: list, batch: int, runs: int) -> dict:
    """Decode throughput of the engine with `batch` rows decoding together (a warm-up run, then `runs`)."""
    per_step = []
    counters = runner.om.counters
    delta: dict[str, int] = {}
    total_steps = 0
    for r in range(runs + 1):
        rows = batch_rows(segments, batch, r)
        for b, (prompt, _) in enumerate(rows):
            runner.prefill(b, prompt)
        steps = min(len(f) for _, f in rows)
        pos = [len(p) for p, _ in rows]
        runner.after_step()
        before = counters.totals()
        sync(runner.device)
        t0 = time.perf_counter()
        for i in range(steps):
            runner.decode([f[i] for _, f in rows], [p + i for p in pos])
        sync(runner.device)
        elapsed = time.perf_counter() - t0
        runner.after_step()
        if r:
            per_step.append(elapsed / steps)
            after = counters.totals()
            for k in after:
                delta[k] = delta.get(k, 0) + after[k] - before[k]
            total_steps += steps
    out = throughput(per_step, batch)
    out["hit_rate"] = (delta["hits_resident"] + delta["hits_prefetched"]) / max(1, delta["requests"])
    out["misses_per_step"] = delta["misses"] / total_steps
    for k in ("bytes_demand", "bytes_host_read", "bytes_fill"):
        out[f"{k.removeprefix('bytes_')}_mb_per_step"] = delta[k] / total_steps / 1e6
    out["streamed"] = runner.streams
    return out


def diagnose_recall(om, runner, workload, bank, bank_fp32, manifest) -> dict:
    """Online recall of the `exact` policy on one run of the workload, along every path a prediction can
    take (inline, worker thread, per-tap CUDA graphs, captured decode steps), in the bank's dtype and in
    fp32: they must agree with each other and with the offline held-out recall."""
    out = {}
    modes = [
        ("inline fp32", dict(threaded=False), bank_fp32, False),
        ("inline", dict(threaded=False), bank, False),
        ("worker", dict(threaded=True, graphs_enabled=False), bank, False),
        ("worker + tap graphs", dict(threaded=True), bank, False),
        ("decode graphs", dict(), bank, True),
    ]
    for name, kw, b, graphs in modes:
        replace_cache(om, CacheBudget(fraction=0.5))
        pf = build_prefetcher(om, EngineConfig(policy="exact"), bank=b, manifest=manifest, **kw)
        runner.graphs_enabled = graphs
        runner.invalidate()
        try:
            workload.one(*workload.segments[0])
            workload.one(*workload.segments[1])
        finally:
            pf.remove()
            runner.graphs_enabled = True
            runner.invalidate()
        c = om.counters.totals()
        out[name] = {
            "recall": c["predicted_routed"] / max(1, c["routed_scored"]),
            "routed_scored": c["routed_scored"],
            "prefetch_issued": c["prefetch_issued"],
        }
        log(f"online recall, {name}: {out[name]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--prompts", type=Path, default=Path("../shared/data/mmlu/test"))
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_decode"))
    ap.add_argument("--fractions", default="1.0,0.5,0.25")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--collect-prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=16000)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--predictor-hidden", type=int, default=2048)
    ap.add_argument("--predictor-report", action="store_true", help="both paper pairings, full evaluation")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument(
        "--embed-std", type=float, default=1.0, help="see build_synthetic (0.02 collapses routing)"
    )
    ap.add_argument("--no-plain", action="store_true", help="skip the plain transformers baseline")
    ap.add_argument("--plain-tokens", type=int, default=16, help="decode steps per run of the slow baseline")
    ap.add_argument(
        "--deadline", type=float, default=0.0, help="seconds; skip the remaining configs after it"
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--batches", default="4,8", help="batch sizes of the throughput runs (resident and 50%%); empty: none"
    )
    ap.add_argument(
        "--diagnose-recall", action="store_true", help="online recall along every prediction path"
    )
    ap.add_argument(
        "--segmented",
        default="none,overprovision",
        help="policies also run with segmented steps (MOE_HOST_READS=false) below a full cache",
    )
    ap.add_argument("--smoke", action="store_true", help="a shrunken shape on the CPU, to test this script")
    args = ap.parse_args()

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    tok = builtin_tokenizer()
    cfg = preset_config(args.preset, **({**SMOKE, "vocab_size": len(tok)} if args.smoke else {}))
    tag = args.preset.replace("-", "_") + ("_smoke" if args.smoke else "")
    json_path = args.out / f"decode_{tag}.json"
    routing = args.work / f"routing_{tag}.json"
    routing.unlink(missing_ok=True)

    started = time.perf_counter()

    def late() -> bool:
        return bool(args.deadline) and time.perf_counter() - started > args.deadline

    t0 = time.perf_counter()
    om = build_synthetic(
        cfg, device, dtype, CacheBudget(fraction=1.0), name=args.preset, embed_std=args.embed_std
    )
    log(
        f"built {args.preset}: {om.store.total_experts} experts, {om.store.nbytes / 1e9:.1f} GB pinned, {time.perf_counter() - t0:.0f}s"
    )
    cuda = device.type == "cuda"
    bw = pinned_bandwidth(256 << 20)["gb_per_s"] * 1e9 if cuda else None
    hbm = device_bandwidth()["gb_per_s"] * 1e9 if cuda else None
    active = active_bytes_per_token(om)
    result = {
        "preset": args.preset,
        "random_weights": True,
        "embed_std": args.embed_std,
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "dtype": str(dtype),
        "top_k": om.top_k,
        "experts_total": om.store.total_experts,
        "expert_bytes": om.store.layout.nbytes,
        "h2d_gb_per_s": bw / 1e9 if bw else None,
        "hbm_gb_per_s": hbm / 1e9 if hbm else None,
        "active_bytes_per_token": active,
        "hbm_floor_ms": 1e3 * active["total_bytes"] / hbm if hbm else None,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "prompt_tokens": PROMPT_TOKENS,
        "decode": "teacher-forced, batch 1: each step feeds the text's next token; each run its own text",
        "command": "python " + " ".join(sys.argv),
        "configs": [],
    }

    def write() -> None:
        json_path.write_text(json.dumps(result, indent=1))

    prompts = read_prompts(args.prompts)
    fresh = prompts[-80:-60] if args.diagnose_recall else []
    traced = spread(prompts[:-80], args.collect_prompts)
    bank, bank_fp32, manifest, result["predictors"] = train_predictors(
        om, tok, traced, args.work, args, args.out, tag, fresh
    )
    write()
    text = " ".join(prompts[-80:])  # not among the traced prompts
    ids = tok.encode(text, add_special_tokens=False)
    seg = PROMPT_TOKENS + args.new_tokens
    if len(ids) < seg * (args.runs + 1) + args.prefill_tokens:
        raise SystemExit(f"the benchmark text has only {len(ids)} tokens; lower --new-tokens or --runs")
    segments = [
        (ids[i * seg : i * seg + PROMPT_TOKENS], ids[i * seg + PROMPT_TOKENS : (i + 1) * seg])
        for i in range(args.runs + 1)
    ]
    long_prompt = ids[-args.prefill_tokens :]
    batches = [int(b) for b in args.batches.split(",") if b]

    # ---- the plain transformers forward, if every weight fits on the GPU
    plain_tokens = None
    if cuda and not args.no_plain:
        replace_cache(om, CacheBudget(gigabytes=0.0))
        free, total = torch.cuda.mem_get_info()
        need = om.store.nbytes + (2 << 30)
        if need < free:
            prompt, feed = segments[1]
            result["plain"] = plain_decode(om, prompt, feed[: args.plain_tokens], runs=3)
            plain_tokens = result["plain"]["tokens"]
            log(
                f"plain transformers forward: {result['plain']['tok_s_median']:.2f} tok/s ({result['plain']['experts_implementation']})"
            )
            for b in batches:
                res = plain_batched(om, batch_rows(segments, b, 1)[:b], runs=2)
                result.setdefault("batched", {}).setdefault("plain", {})[str(b)] = res
                log(f"plain transformers forward, batch {b}: {res['tok_s_median']:.1f} tok/s")
        else:
            result["plain"] = {
                "skipped": f"the weights need {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free of {total / 1e9:.0f}"
            }
            log(f"plain forward skipped: {result['plain']['skipped']}")
        write()

    runner = ModelRunner(om, rows=1, max_len=1024)
    workload = Workload(runner, segments)
    if args.diagnose_recall:
        result["recall_paths"] = diagnose_recall(om, runner, workload, bank, bank_fp32, manifest)
        write()
    fractions = [float(f) for f in args.fractions.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    reference = None

    def record(policy, fraction, s, slots, wall, variant=None):
        nonlocal reference
        if reference is None:
            reference = s["tokens"]
            if plain_tokens:  # the engine's greedy choices against the plain forward's, same text (bf16)
                mine = s["tokens"][0][: len(plain_tokens)]
                same = sum(a == b for a, b in zip(mine, plain_tokens, strict=False))
                result["agreement_with_plain"] = {"steps": len(mine), "same_argmax": same}
                log(f"argmax agreement with the plain forward: {same}/{len(mine)}")
        s["same_tokens_as_reference"] = s["tokens"] == reference
        entry = {"policy": policy, "fraction": fraction, "slots": slots, "summary": s, "wall_s": wall}
        if variant:
            entry["variant"] = variant
        result["configs"].append(entry)
        write()
        log(
            f"{policy:>13} {variant or '':14} @ {100 * fraction:3.0f}%: {s['tok_s_median']:7.2f} tok/s "
            f"[{s['tok_s_min']:.2f}-{s['tok_s_max']:.2f}], hit {100 * s['hit_rate']:5.1f}%, "
            f"stall {s['stall_ms_per_token']:6.2f} ms/tok, {s['bytes_per_token'] / 1e6:7.1f} MB/tok "
            f"(host reads {s['host_read_bytes_per_token'] / 1e6:.1f}, fills {s['fill_bytes_per_token'] / 1e6:.1f}), "
            f"same tokens {s['same_tokens_as_reference']}, graphs {runner.steps}"
        )

    for fraction in fractions:
        here = ["none"] if fraction >= 1.0 else policies
        for policy in here:
            if late():
                log(f"deadline: {policy} @ {fraction} and later configs skipped")
                result.setdefault("skipped", []).append(f"{policy}@{fraction}")
                continue
            if policy == "oracle" and not routing.exists():
                log("oracle skipped: no routing recorded (run policy none first)")
                continue
            if policy == "none" and fraction < 1.0:
                routing.unlink(missing_ok=True)  # record this cache size's routing for its oracle
            runner.reset_steps()
            s, slots, wall = run_config(
                om, runner, workload, bank, manifest, policy, fraction, routing, args, bw
            )
            record(policy, fraction, s, slots, wall)
        if cuda and fraction >= 1.0 and not late():  # ablations of the fast path, all experts resident
            for variant in ("eager", "torch-gemv"):
                runner.graphs_enabled = variant != "eager"
                runner.use_triton = variant != "torch-gemv" and runner.use_triton
                s, slots, wall = run_config(
                    om, runner, workload, bank, manifest, "none", fraction, routing, args, bw
                )
                record("none", fraction, s, slots, wall, variant=variant)
                runner.graphs_enabled, runner.use_triton = True, True
                runner.invalidate()
        if (
            cuda and fraction == 0.5 and "exact" in policies and not late()
        ):  # the same policy without CUDA graphs
            runner.graphs_enabled = False
            s, slots, wall = run_config(
                om, runner, workload, bank, manifest, "exact", fraction, routing, args, bw
            )
            record("exact", fraction, s, slots, wall, variant="eager")
            runner.graphs_enabled = True
        if cuda and fraction < 1.0:  # the same policies with segmented steps (no reads from host memory)
            for policy in [p for p in args.segmented.split(",") if p in here]:
                if late():
                    result.setdefault("skipped", []).append(f"{policy}@{fraction}/segmented")
                    continue
                runner.host_reads = False
                runner.reset_steps()
                try:
                    s, slots, wall = run_config(
                        om, runner, workload, bank, manifest, policy, fraction, routing, args, bw
                    )
                finally:
                    runner.host_reads = True
                    runner.invalidate()
                record(policy, fraction, s, slots, wall, variant="segmented")

    # ---- throughput: several rows decoding together, every expert resident and at a 50% cache
    if batches and not late():
        runner_b = ModelRunner(om, rows=max(batches), max_len=1024)
        for fraction in (1.0, 0.5):
            cache = replace_cache(om, CacheBudget(fraction=fraction))
            if fraction >= 1.0:
                cache.load_all()
            for streamed in (True, False) if fraction < 1.0 else (True,):
                runner_b.host_reads = streamed
                runner_b.invalidate()
                name = "engine" if streamed else "engine_segmented"
                for b in batches:
                    res = engine_batched(runner_b, workload.segments, b, runs=3)
                    result.setdefault("batched", {}).setdefault(name, {}).setdefault(str(fraction), {})[
                        str(b)
                    ] = res
                    log(
                        f"{name}, batch {b} @ {100 * fraction:.0f}% (none): {res['tok_s_median']:.1f} tok/s, "
                        f"hit {100 * res['hit_rate']:.1f}%, {res['misses_per_step']:.1f} misses/step, "
                        f"host reads {res['host_read_mb_per_step']:.0f} MB/step, "
                        f"fills {res['fill_mb_per_step']:.0f} MB/step, demand {res['demand_mb_per_step']:.0f} MB/step"
                    )
                write()
            runner_b.host_reads = True
        del runner_b

    # ---- prefill of a long prompt at the smallest cache
    smallest = min(fractions)
    replace_cache(om, CacheBudget(fraction=smallest))
    runner_long = ModelRunner(om, rows=1, max_len=args.prefill_tokens + 8)
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        runner_long.prefill(0, long_prompt)
        sync(device)
        times.append(time.perf_counter() - t0)
    result["prefill"] = {
        "fraction": smallest,
        "prompt_tokens": len(long_prompt),
        "s": times,
        "tok_s_median": len(long_prompt) / statistics.median(times),
        "tok_s_min": len(long_prompt) / max(times),
        "tok_s_max": len(long_prompt) / min(times),
    }
    log(
        f"prefill {len(long_prompt)} tokens @ {100 * smallest:.0f}%: {result['prefill']['tok_s_median']:.0f} tok/s"
    )
    del runner_long
    write()

    if cuda and not args.no_profile and not late():
        result["overlap"] = {}
        for policy in ("none", "exact"):
            replace_cache(om, CacheBudget(fraction=0.5))
            pf = build_prefetcher(om, EngineConfig(policy=policy), bank=bank, manifest=manifest)
            runner.invalidate()
            try:
                result["overlap"][policy] = profile_overlap(workload, args.work, policy)
            finally:
                if pf is not None:
                    pf.remove()
                runner.invalidate()
            log(f"overlap {policy} @ 50%: {json.dumps(result['overlap'][policy])}")
        write()
    add_ratios(result)
    write()
    plot(result, args.out / f"decode_{tag}.png")
    log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
