"""Predictors on the GPU: collect -> train (both architectures) -> evaluate, on a random-weight model of a real
model's shape built on the device, with MMLU prompts. Writes JSON, PNG and a Markdown table.

    python bench/predictors_gpu.py --preset deepseek-v2-lite --prompts ../shared/data/mmlu/test --out bench/results

Random weights are not a trained model: routing of a random model has none of a trained model's structure,
so these figures say how the pipeline behaves at full scale, not how predictable a real model's routing is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402

from engine.model.builtin import builtin_tokenizer  # noqa: E402
from engine.model.loader import CacheBudget, build_synthetic  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402
from predictors.bundle import bundle_manifest, save_bundle  # noqa: E402
from predictors.collect import collect, read_prompts  # noqa: E402
from predictors.evaluate import evaluate, plot_result, result_table  # noqa: E402
from predictors.traces import TraceSet  # noqa: E402
from predictors.train import train_bank  # noqa: E402

PAIRS = ((1, "rank_bce"), (2, "wbce"))  # the paper's pairings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="deepseek-v2-lite")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/predictors_gpu"))
    ap.add_argument("--max-prompts", type=int, default=1500)
    ap.add_argument("--max-samples", type=int, default=120_000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--embed-std", type=float, default=1.0, help="see engine.model.loader.build_synthetic")
    args = ap.parse_args()
    dev = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    om = build_synthetic(
        preset_config(args.preset),
        dev,
        torch.bfloat16,
        CacheBudget(fraction=1.0),
        name=args.preset,
        embed_std=args.embed_std,
    )
    print(f"built {args.preset} in {time.perf_counter() - t0:.0f}s", flush=True)
    prompts = read_prompts(args.prompts)[: args.max_prompts]
    traces_dir = args.work / "traces"
    t0 = time.perf_counter()
    collect(
        om.model,
        builtin_tokenizer(),
        prompts,
        traces_dir,
        max_samples=args.max_samples,
        max_prompt_tokens=256,
        progress=False,
    )
    t_collect = time.perf_counter() - t0
    traces = TraceSet(traces_dir)
    print(f"collected {traces.summary()} in {t_collect:.0f}s", flush=True)
    del om
    torch.cuda.empty_cache()
    report = {
        "device": torch.cuda.get_device_name(0),
        "preset": args.preset,
        "prompts": len(prompts),
        "collect_s": t_collect,
        "traces": traces.summary(),
        "runs": {},
        "embed_std": args.embed_std,
        "random_weights": True,
        "command": "python " + " ".join(sys.argv),
    }
    tag = args.preset.replace("-", "_")
    for arch, loss in PAIRS:
        t0 = time.perf_counter()
        bank, train_report = train_bank(traces, arch, loss, epochs=args.epochs, device="cuda", progress=False)
        t_train = time.perf_counter() - t0
        manifest = bundle_manifest(traces.manifest, train_report)
        save_bundle(args.work / f"bundle_arch{arch}", bank, manifest)
        result = evaluate(bank, manifest, traces, device="cuda")
        name = f"arch{arch}_{loss}"
        report["runs"][name] = {"train_s": t_train, "result": result}
        plot_result(result, args.out / f"predictors_{tag}_{name}.png")
        o = result["overall"]
        print(f"{name}: trained in {t_train:.0f}s; overall {json.dumps(o)[:400]}", flush=True)
        console = Console(record=True, width=160)
        console.print(result_table(result))
        (args.out / f"predictors_{tag}_{name}.txt").write_text(console.export_text())
        (args.out / f"predictors_{tag}.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / f"predictors_{tag}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
