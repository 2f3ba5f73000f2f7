"""The twin's per-layer predictors (`bench/train_twin.py`, phase 4) and the paper's Table 3.

- `train_predictors`: `predictors.train.train_bank` on the MMLU traces (10% of the prompts held out, early
  stopping; batch 2048, lr 1.5e-3), Arch 2 + weighted BCE by default (the paper's pairing for Table 4),
  epochs per layer fitted to a time budget (`bench.predictor_steps.plan_epochs`), then `predictors.evaluate` on the held-out
  MMLU prompts (with the router, cross-layer and frequency-prior baselines) and on the chat traces.
  Per layer: recall@k, recall@k' (k' = ceil(1.5 k)), top-1 and the exact-set rate.
- `table3`: the four losses x both architectures, one epoch each on the same split of the same samples
  (the paper's Table 3 on DeepSeek-V2-Lite: mean held-out recall@k after one epoch), skipping what no longer
  fits before the deadline.
Imports torch, `bench.predictor_steps`, `engine.prefetch.nets` and predictors.{train, evaluate, losses}.
"""

from __future__ import annotations

import time

import torch

from bench.predictor_steps import PREDICTOR_BATCH, PREDICTOR_LR, plan_epochs
from predictors.evaluate import evaluate
from predictors.train import train_bank

BATCH, LR = PREDICTOR_BATCH, PREDICTOR_LR
PAPER_TABLE3 = {  # DeepSeek-V2-Lite, recall@k after one epoch: MSE / WBCE / focal / ranking-aware BCE
    1: {"mse": 0.8661, "wbce": 0.8900, "focal": 0.8640, "rank_bce": 0.8919},
    2: {"mse": 0.8661, "wbce": 0.9019, "focal": 0.8764, "rank_bce": 0.8995},
}
TABLE3_LOSSES = ("mse", "wbce", "focal", "rank_bce")
GOAL = {"recall_at_k_mean": 0.95, "recall_at_k_layer0": 0.95, "top1": 0.995}  # issue 21's Table 4 goal


def _layer_rows(report: dict) -> list[dict]:
    keys = (
        "layer",
        "best_epoch",
        "epochs_run",
        "recall_at_k",
        "overprov_recall",
        "top1_accuracy",
        "set_accuracy",
    )
    return [{k: r[k] for k in keys} for r in report["layers"]]


def train_predictors(
    traces, chat_traces, *, arch: int, loss: str, hidden: int, device: str, budget_s: float, seed: int
) -> tuple[torch.nn.Module, dict]:
    """(bank on the CPU, report) of one pairing trained within about `budget_s` seconds, evaluated."""
    t0 = time.perf_counter()
    epochs, _ = plan_epochs(0.8 * budget_s, traces, arch, loss, hidden, device)
    bank, report = train_bank(
        traces,
        arch,
        loss,
        hidden=hidden,
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        device=device,
        seed=seed,
        progress=False,
    )
    manifest = {
        "fingerprint": traces.fingerprint,
        "arch": arch,
        "loss": loss,
        "training": {"holdout_frac": 0.1, "seed": seed},
    }
    ev = {
        "mmlu_heldout": evaluate(bank, manifest, traces, device=device, latency_iters=50),
        "chat_all": evaluate(bank, manifest, chat_traces, split="all", device=device, latency_iters=10),
    }
    layers = _layer_rows(report)
    mean = report["heldout_mean"]
    out = {
        "arch": arch,
        "loss": loss,
        "hidden": hidden,
        "epochs_cap": epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "data": report["data"],
        "heldout_mean": mean,
        "layers": layers,
        "goal": GOAL,
        "meets_goal": {
            "recall_at_k_mean": mean["recall_at_k"] >= GOAL["recall_at_k_mean"],
            "recall_at_k_layer0": layers[0]["recall_at_k"] >= GOAL["recall_at_k_layer0"],
            "top1": mean["top1_accuracy"] >= GOAL["top1"],
        },
        "evaluate": {name: _condensed_eval(r) for name, r in ev.items()},
    }
    return bank.cpu().eval(), out


def _condensed_eval(result: dict) -> dict:
    """An evaluate() result, per layer reduced to recall@k / recall@k' / top-1 per method."""
    keep = ("recall_at_k", "overprov_recall", "top1_accuracy")
    layers = []
    for r in result["layers"]:
        row = {"layer": r["layer"], "layer_id": r["layer_id"]}
        for m in ("predictor", "router", "crosslayer", "prior"):
            row[m] = None if r[m] is None else {k: r[m][k] for k in keep}
        layers.append(row)
    overall = {m: None if v is None else {k: v[k] for k in keep} for m, v in result["overall"].items()}
    return {
        "split": result["split"],
        "samples_per_layer": result["samples_per_layer"],
        "k_prime": result["k_prime"],
        "overall": overall,
        "layers": layers,
    }


def table3(traces, *, hidden: int, device: str, seed: int, deadline: float, say=print) -> dict:
    """Mean held-out recall@k (and per layer) after one epoch for every loss x architecture; `deadline` is a
    time.monotonic() after which no new cell starts."""
    cells, durations = [], []
    for arch in (1, 2):
        for loss in TABLE3_LOSSES:
            if durations and time.monotonic() + max(durations) > deadline:
                cells.append({"arch": arch, "loss": loss, "skipped": "deadline"})
                continue
            t0 = time.monotonic()
            _, rep = train_bank(
                traces,
                arch,
                loss,
                hidden=hidden,
                epochs=1,
                batch_size=BATCH,
                lr=LR,
                device=device,
                seed=seed,
                patience=1,
                progress=False,
            )
            durations.append(time.monotonic() - t0)
            mean = rep["heldout_mean"]
            cells.append(
                {
                    "arch": arch,
                    "loss": loss,
                    "recall_at_k": mean["recall_at_k"],
                    "top1": mean["top1_accuracy"],
                    "paper_recall_at_k": PAPER_TABLE3[arch][loss],
                    "seconds": round(durations[-1], 1),
                    "recall_at_k_per_layer": [round(r["recall_at_k"], 4) for r in rep["layers"]],
                }
            )
            say(
                f"table 3: arch {arch} {loss}: recall@k {mean['recall_at_k']:.4f} (paper {PAPER_TABLE3[arch][loss]:.4f})"
            )
    return {
        "epochs": 1,
        "samples": traces.summary(),
        "paper": "DeepSeek-V2-Lite, recall@k after one epoch",
        "cells": cells,
    }
