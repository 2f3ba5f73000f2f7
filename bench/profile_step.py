"""Where one decode step's GPU time goes: kernels per step, by name, of the engine's captured step.

    python bench/profile_step.py --preset qwen3-30b-a3b --layers 8 --out bench/results

Builds a random-weight model of the preset's shape on the GPU (`--layers` keeps the first few layers: the
per-layer picture is the same and the build is quicker), holds every expert resident (or `--fraction`
of them), prefills a prompt, decodes a few warm-up steps (the step is captured as CUDA graphs), then
profiles `--steps` decode steps with torch.profiler. Reports, per step: kernels launched, GPU busy time
(union of kernel intervals), the span from first to last kernel, and a table of kernels by name with count
and microseconds per step. A second profile of the same steps run eagerly counts the aten operators per
step, which names the Python-level operations behind the kernels. JSON under `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import chrome_trace_overlap, device_name  # noqa: E402
from engine.model.loader import CacheBudget, build_synthetic, replace_cache  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402
from engine.runner.runner import ModelRunner  # noqa: E402


def kernel_table(trace: dict, steps: int) -> list[dict]:
    by: dict[str, list[float]] = defaultdict(list)
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("cat") == "kernel":
            by[ev.get("name", "?")].append(float(ev["dur"]))
    rows = [
        {
            "kernel": name[:160],
            "per_step": len(d) / steps,
            "us_per_step": sum(d) / steps,
            "us_each": sum(d) / len(d),
        }
        for name, d in by.items()
    ]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def profile_steps(runner: ModelRunner, prompt: list[int], steps: int, work: Path, tag: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    runner.prefill(0, prompt)
    pos = len(prompt)
    for t in range(4):  # warm-up: eager first step, capture, replay
        runner.decode([t + 1], [pos])
        pos += 1
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for t in range(steps):
            runner.decode([t + 7], [pos])
            pos += 1
        torch.cuda.synchronize()
    runner.after_step()
    path = work / f"trace_{tag}.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    path.unlink()
    summary = chrome_trace_overlap(trace)
    ops = defaultdict(int)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            ops[ev.key] += ev.count
    return {
        "kernels_per_step": summary["kernels"] / steps,
        "gpu_busy_ms_per_step": summary["compute_busy_ms"] / steps,
        "gpu_span_ms_per_step": summary["gpu_span_ms"] / steps,
        "kernels": kernel_table(trace, steps),
        "aten_ops_per_step": dict(sorted(((k, v / steps) for k, v in ops.items()), key=lambda kv: -kv[1])),
    }


def timed(runner: ModelRunner, prompt: list[int], steps: int) -> float:
    runner.prefill(0, prompt)
    pos = len(prompt)
    for t in range(4):
        runner.decode([t + 1], [pos])
        pos += 1
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in range(steps):
        runner.decode([t + 7], [pos])
        pos += 1
    torch.cuda.synchronize()
    runner.after_step()
    return 1e3 * (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/profile_step"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    cfg = preset_config(args.preset, num_hidden_layers=args.layers)
    om = build_synthetic(cfg, dev, torch.bfloat16, CacheBudget(fraction=1.0), name=args.preset)
    cache = replace_cache(om, CacheBudget(fraction=args.fraction))
    if args.fraction >= 1.0:
        cache.load_all()
    prompt = list(range(100, 164))
    runner = ModelRunner(om, rows=1, max_len=512)
    result = {
        "preset": args.preset,
        "layers": args.layers,
        "fraction": args.fraction,
        "device": device_name(dev),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": "python " + " ".join(sys.argv),
    }
    for graphs in (True, False):
        runner.graphs_enabled = graphs
        runner.invalidate()
        tag = "graphs" if graphs else "eager"
        ms = timed(runner, prompt, args.steps)
        runner.invalidate()
        prof = profile_steps(runner, prompt, args.steps, args.work, tag)
        result[tag] = {"ms_per_step": ms, "ms_per_layer": ms / args.layers, **prof}
        print(
            f"{tag}: {ms:.2f} ms/step ({ms / args.layers * 1e3:.0f} us/layer), "
            f"{prof['kernels_per_step']:.0f} kernels/step, busy {prof['gpu_busy_ms_per_step']:.2f} ms, "
            f"span {prof['gpu_span_ms_per_step']:.2f} ms",
            flush=True,
        )
        for r in prof["kernels"][:45]:
            print(
                f"  {r['us_per_step']:8.1f} us {r['per_step']:6.1f}x {r['us_each']:6.1f} us  {r['kernel'][:110]}"
            )
        if not graphs:
            for k, v in list(prof["aten_ops_per_step"].items())[:45]:
                print(f"  {v:7.1f}  {k}")
    path = args.out / f"profile_step_{args.preset.replace('-', '_')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
