"""Predictors for the decode benchmark, trained on the random-weight model's own routing traces.

Arch 2 with the weighted BCE is the bank every policy uses; `--predictor-report` also trains Arch 1 with
the rank loss and writes the full evaluation table of both (baselines included), as
`bench/predictors_gpu.py` does; `--diagnose-recall` adds the bank's offline recall on the benchmark's own
(never traced) text.

Imports `predictors` only (and rich for the report).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.decode_lib.record import log
from predictors.collect import collect
from predictors.traces import TraceSet
from predictors.train import train_bank


@dataclass
class Bank:
    """The bank the policies use (the served dtype), a float32 copy (the recall diagnosis) and its manifest;
    `ahead`: d -> the bank of lookahead distance d (`exact+d`; only the twin replay has them)."""

    bank: object
    fp32: object
    manifest: dict
    ahead: dict = field(default_factory=dict)


def train_predictors(om, tok, prompts: list[str], work: Path, args, out: Path, tag: str, fresh: list[str]):
    """Collect traces over `prompts`, train the pairings; the bank and what the record keeps of it."""
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
    served = bank2.to(device=om.device, dtype=om.dtype).eval()
    return Bank(served, fp32, {"loss": "wbce"}), info


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
