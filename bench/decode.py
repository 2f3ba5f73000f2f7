"""Decode speed under every prefetch policy and cache size, on a random-weight model of a real shape.

    python bench/decode.py --preset qwen3-30b-a3b --prompts .cache/mmlu --out bench/results

One run does everything on one GPU: builds the model on the device (experts in pinned host memory),
collects routing traces over MMLU prompts and trains Arch-2 predictors on them (the model's own
traces, a few epochs), records the true routing of the benchmark workload (for `oracle`), then for
each cache size and policy decodes the same greedy prompt several times and reports medians:
tokens/s, prefetch hit rate, stall ms per token, bytes copied per token, wasted prefetch, online
recall, prediction latency; with the PCIe bound from the measured host->device bandwidth. A profiler
trace of a few decode steps measures how much of the expert-copy time ran concurrently with compute.

Results: JSON (written after every configuration, so a cut-off run keeps what it measured) and a
PNG, tokens/s against cache size with one line per policy. `--smoke` runs a shrunken shape on the
CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import chrome_trace_overlap, device_name, pinned_bandwidth  # noqa: E402
from engine.builtin import builtin_tokenizer  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.loader import CacheBudget, build_synthetic, replace_cache  # noqa: E402
from engine.prefetch import build_prefetcher  # noqa: E402
from engine.presets import preset_config  # noqa: E402
from engine.routing_trace import RoutingRecorder  # noqa: E402
from engine.runner import ModelRunner, SequenceState  # noqa: E402
from predictors.collect import collect, read_prompts  # noqa: E402
from predictors.fingerprint import model_fingerprint  # noqa: E402
from predictors.traces import TraceSet  # noqa: E402
from predictors.train import train_bank  # noqa: E402

PROMPT_TOKENS = 64
POLICIES = ("none", "exact", "overprovision", "top1", "adaptive", "crosslayer", "oracle")
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


class Workload:
    """Prefill a prompt, then decode steps that feed the text's next tokens one at a time (teacher
    forcing); a warm-up and `runs` measured runs, each on its own stretch of text, as a server sees
    different requests (repeating one text would find its experts still cached from the run before).
    The whole sequence of calls is what `oracle` replays.

    Feeding real text rather than the model's own greedy tokens matters for a random-weight model: its
    greedy output repeats one token, so every decode step would route to the same experts and any cache
    would hit. Each step costs what a decode step costs (one token, KV cache); the argmax at every step
    is recorded to check that the outputs never change across policies and cache sizes.
    """

    def __init__(self, runner: ModelRunner, segments: list[tuple[list[int], list[int]]]) -> None:
        self.runner, self.segments = runner, segments  # [(prompt, fed tokens)], the first one warms up
        self.runs = len(segments) - 1
        self.new = len(segments[0][1])
        self.device = runner.device

    def one(self, prompt: list[int], feed: list[int]) -> dict:
        om, runner = self.runner.om, self.runner
        state = SequenceState()
        sync(self.device)
        t0 = time.perf_counter()
        logits = runner.forward(state, prompt)
        sync(self.device)
        t_prefill = time.perf_counter() - t0
        runner.after_step()
        before = om.counters.totals()
        stall0 = STALLS.total
        t0 = time.perf_counter()
        argmax = []
        for tok in feed:
            argmax.append(torch.argmax(logits))  # kept on the device: no sync inside the timed loop
            logits = runner.forward(state, [tok])
        sync(self.device)
        tokens = [int(t) for t in argmax]
        t_decode = time.perf_counter() - t0
        runner.after_step()
        after = om.counters.totals()
        delta = {k: after[k] - before[k] for k in after}
        return {
            "prefill_s": t_prefill,
            "decode_s": t_decode,
            "tokens": tokens,
            "delta": delta,
            "stall_s": STALLS.total - stall0,
        }

    def run(self) -> list[dict]:
        self.one(*self.segments[0])  # warm-up: fills the cache the way a running server's would be
        return [self.one(*seg) for seg in self.segments[1:]]


class _Stalls:
    total = 0.0

    def add(self, s: float) -> None:
        self.total += s


STALLS = _Stalls()


def summarise(runs: list[dict], new: int, prompt_len: int, expert_bytes: int, bw: float | None) -> dict:
    tok_s = [new / r["decode_s"] for r in runs]
    d = {k: sum(r["delta"][k] for r in runs) for k in runs[0]["delta"]}
    n = new * len(runs)
    req = max(1, d["requests"])
    bytes_tok = (d["bytes_prefetch"] + d["bytes_demand"]) / n
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
        "prefetch_issued_per_token": d["prefetch_issued"] / n,
        "wasted_per_token": d["prefetch_wasted"] / n,
        "wasted_ratio": d["prefetch_wasted"] / d["prefetch_issued"] if d["prefetch_issued"] else None,
        "online_recall": d["predicted_routed"] / d["routed_scored"] if d["routed_scored"] else None,
        "same_tokens_every_run": all(r["tokens"] == runs[0]["tokens"] for r in runs),
        "tokens": runs[0]["tokens"],
    }
    if bw:
        out["pcie_ms_per_token"] = 1e3 * bytes_tok / bw
        out["pcie_bound_tok_s"] = bw / bytes_tok if bytes_tok else None
    return out


def train_predictors(om, tok, prompts: list[str], work: Path, args) -> tuple:
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
    t0 = time.perf_counter()
    bank, report = train_bank(
        traces,
        2,
        "wbce",
        epochs=args.epochs,
        device=str(om.device),
        progress=False,
        hidden=args.predictor_hidden,
    )
    t_train = time.perf_counter() - t0
    log(f"predictors (arch 2, wbce): held-out {json.dumps(report['heldout_mean'])[:300]} in {t_train:.0f}s")
    manifest = {"loss": "wbce", "heldout_mean": report["heldout_mean"]}
    info = {
        "collect_s": t_collect,
        "train_s": t_train,
        "traces": traces.summary(),
        "heldout_mean": report["heldout_mean"],
        "epochs": args.epochs,
        "hidden": args.predictor_hidden,
    }
    bank = bank.to(device=om.device, dtype=om.dtype).eval()
    return bank, manifest, info


def profile_overlap(om, workload: Workload, out: Path, tag: str) -> dict:
    """Profile a few decode steps; how much host->device copy time overlapped compute kernels."""
    from torch.profiler import ProfilerActivity, profile

    runner = workload.runner
    state = SequenceState()
    prompt, feed = workload.segments[-1]
    runner.forward(state, prompt)
    for tok in feed[:2]:
        runner.forward(state, [tok])
    sync(workload.device)
    steps = feed[2:6]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for tok in steps:
            runner.forward(state, [tok])
        sync(workload.device)
    runner.after_step()
    path = out / f"profile_{tag}.json"
    prof.export_chrome_trace(str(path))
    res = chrome_trace_overlap(json.loads(path.read_text()))
    res["decode_steps"] = len(steps)
    path.unlink()  # tens of MB; the numbers are what we keep
    return res


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_policy: dict[str, list[tuple[float, float, float, float]]] = {}
    for c in result["configs"]:
        if c.get("threaded", True) is False:
            continue
        s = c["summary"]
        by_policy.setdefault(c["policy"], []).append(
            (c["fraction"], s["tok_s_median"], s["tok_s_min"], s["tok_s_max"])
        )
    for policy, pts in by_policy.items():
        pts.sort()
        x = [100 * p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=policy)
    ax.set_xlabel("expert cache (% of all routed experts on the GPU)")
    ax.set_ylabel("decode tokens/s (batch 1, median, min-max bars)")
    ax.set_title(f"{result['preset']} (random weights) on {result['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--prompts", type=Path, default=Path("../shared/data/mmlu/test"))
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_decode"))
    ap.add_argument("--fractions", default="0.25,0.5,1.0")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument(
        "--full-cache-policies", default="none,exact", help="policies run at 100%% (all alike there)"
    )
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--collect-prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=16000)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--predictor-hidden", type=int, default=2048)
    ap.add_argument(
        "--collect-fraction", type=float, default=1.0, help="cache while tracing (all experts if it fits)"
    )
    ap.add_argument(
        "--embed-std",
        type=float,
        default=1.0,
        help="token-embedding std of the random model (see build_synthetic; 0.02 collapses routing)",
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a shrunken shape on the CPU, to test this script")
    args = ap.parse_args()

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    tok = builtin_tokenizer()
    overrides = {**SMOKE, "vocab_size": len(tok)} if args.smoke else {}
    cfg = preset_config(args.preset, **overrides)
    tag = args.preset.replace("-", "_") + ("_smoke" if args.smoke else "")
    json_path = args.out / f"decode_{tag}.json"

    t0 = time.perf_counter()
    om = build_synthetic(
        cfg,
        device,
        dtype,
        CacheBudget(fraction=args.collect_fraction),
        name=args.preset,
        embed_std=args.embed_std,
    )
    log(
        f"built {args.preset}: {om.store.total_experts} experts, {om.store.nbytes / 1e9:.1f} GB pinned, "
        f"{time.perf_counter() - t0:.0f}s"
    )
    om.cache.on_stall = STALLS.add
    bw = pinned_bandwidth(256 << 20)["gb_per_s"] * 1e9 if device.type == "cuda" else None
    result = {
        "preset": args.preset,
        "random_weights": True,
        "embed_std": args.embed_std,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": str(dtype),
        "top_k": om.top_k,
        "experts_total": om.store.total_experts,
        "expert_bytes": om.store.layout.nbytes,
        "h2d_gb_per_s": bw / 1e9 if bw else None,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "command": "python " + " ".join(sys.argv),
        "configs": [],
    }

    prompts = read_prompts(args.prompts)
    bank, manifest, result["predictors"] = train_predictors(
        om, tok, prompts[: args.collect_prompts], args.work, args
    )
    text = " ".join(prompts[-60:])  # not among the traced prompts
    ids = tok.encode(text, add_special_tokens=False)
    seg = PROMPT_TOKENS + args.new_tokens
    if len(ids) < seg * (args.runs + 1):
        raise SystemExit(f"the benchmark text has only {len(ids)} tokens; lower --new-tokens or --runs")
    segments = [
        (ids[i * seg : i * seg + PROMPT_TOKENS], ids[i * seg + PROMPT_TOKENS : (i + 1) * seg])
        for i in range(args.runs + 1)
    ]
    result["prompt_tokens"] = PROMPT_TOKENS
    result["decode"] = (
        "teacher-forced: each step feeds the text's next token; each run its own text (see Workload)"
    )
    runner = ModelRunner(om)
    workload = Workload(runner, segments)
    routing = args.work / "routing.json"
    fractions = [float(f) for f in args.fractions.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    full_policies = set(args.full_cache_policies.split(","))
    reference_tokens = None

    def write() -> None:
        json_path.write_text(json.dumps(result, indent=1))

    for fraction in fractions:
        cache = replace_cache(om, CacheBudget(fraction=fraction))
        log(f"cache {100 * fraction:.0f}%: {cache.capacity} slots")
        runs_here = [p for p in policies if fraction < 1.0 or p in full_policies]
        variants = [(p, None) for p in runs_here]
        if fraction == 0.5 and "exact" in runs_here and device.type == "cuda":
            variants.append(("exact", False))  # ablation: the tap without the worker thread
        for policy, threaded in variants:
            cache = replace_cache(om, CacheBudget(fraction=fraction))
            cache.on_stall = STALLS.add
            recorder = None
            if policy == "none" and not routing.exists():
                recorder = RoutingRecorder(len(om.layers))
                cache.on_route = recorder.record
            if policy == "oracle" and not routing.exists():
                log("oracle skipped: no routing recorded (run policy none first)")
                continue
            ecfg = EngineConfig(policy=policy, oracle_trace=str(routing) if policy == "oracle" else None)
            latencies: list[float] = []
            pf = build_prefetcher(
                om, ecfg, bank=bank, manifest=manifest, threaded=threaded, on_latency=latencies.append
            )
            t0 = time.perf_counter()
            try:
                runs = workload.run()
            finally:
                if pf is not None:
                    pf.remove()
            if recorder is not None:
                recorder.save(routing, model_fingerprint(om.model))
                cache.on_route = None
            s = summarise(runs, args.new_tokens, PROMPT_TOKENS, om.store.layout.nbytes, bw)
            if latencies:
                s["prediction_latency_ms_median"] = 1e3 * statistics.median(latencies)
                s["prediction_latency_ms_p99"] = 1e3 * sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
            if reference_tokens is None:
                reference_tokens = s["tokens"]
            s["same_tokens_as_reference"] = s["tokens"] == reference_tokens
            entry = {
                "policy": policy,
                "fraction": fraction,
                "slots": cache.capacity,
                "summary": s,
                "wall_s": time.perf_counter() - t0,
            }
            if threaded is False:
                entry["threaded"] = False
            result["configs"].append(entry)
            write()
            log(
                f"{policy:>13}{' (inline)' if threaded is False else '':9} @ {100 * fraction:3.0f}%: "
                f"{s['tok_s_median']:6.2f} tok/s [{s['tok_s_min']:.2f}-{s['tok_s_max']:.2f}], "
                f"hit {100 * s['hit_rate']:5.1f}%, stall {s['stall_ms_per_token']:6.1f} ms/tok, "
                f"{s['bytes_per_token'] / 1e6:7.1f} MB/tok, same tokens {s['same_tokens_as_reference']}"
            )

    if not args.no_profile and device.type == "cuda":
        result["overlap"] = {}
        for policy in ("none", "exact"):
            replace_cache(om, CacheBudget(fraction=0.5))
            pf = build_prefetcher(om, EngineConfig(policy=policy), bank=bank, manifest=manifest)
            try:
                result["overlap"][policy] = profile_overlap(om, workload, args.work, policy)
            finally:
                if pf is not None:
                    pf.remove()
            log(f"overlap {policy} @ 50%: {json.dumps(result['overlap'][policy])}")
        write()
    add_ratios(result)
    write()
    plot(result, args.out / f"decode_{tag}.png")
    log(f"wrote {json_path}")


def add_ratios(result: dict) -> None:
    """Time per token against `none` and `oracle` at each cache size (the issue's targets)."""
    by = {(c["policy"], c["fraction"]): c["summary"] for c in result["configs"] if c.get("threaded", True)}
    ratios = {}
    for (policy, fraction), s in by.items():
        row = {}
        for base in ("none", "oracle"):
            b = by.get((base, fraction))
            if b:
                row[f"speedup_vs_{base}"] = s["tok_s_median"] / b["tok_s_median"]
                row[f"time_ratio_to_{base}"] = b["tok_s_median"] / s["tok_s_median"]
        ratios[f"{policy}@{fraction}"] = row
    result["ratios"] = ratios


if __name__ == "__main__":
    main()
