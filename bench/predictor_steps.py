"""Steps 6 and 7 of `bench/train_moe.py`: predictors of both pairings in the time left, and the shipped bundle.

- `plan_epochs`: epochs per layer that fit a time budget, from 20 timed training steps on random data of the
  trace set's shape on the device (+ 20% and a per-layer allowance for reading the samples).
- `train_pairs`: for Arch 1 + ranking-aware BCE and Arch 2 + weighted BCE (the paper's pairings),
  `predictors.train.train_bank` (batch 2048, lr 1.5e-3, else its defaults: 10% of prompts held out, early
  stopping), then `predictors.evaluate` on the held-out MMLU prompts and on the chat traces (split all).
- `ship_bundle`: the pairing with the higher held-out recall@k goes into the checkpoint folder with 48 of its
  held-out MMLU prompts and the recall it reaches on them, traced on the CPU (bench/builtin_pack.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

PAIRS = ((1, "rank_bce"), (2, "wbce"))
PREDICTOR_BATCH, PREDICTOR_LR = 2048, 1.5e-3
CHECK_PROMPTS = 48


def plan_epochs(budget_s: float, traces, arch: int, loss: str, hidden: int, device: str) -> tuple[int, float]:
    """(epochs per layer, seconds per step) so that every layer of `traces` trains within `budget_s`."""
    import torch

    from engine.prefetch.nets import build_predictor
    from predictors.losses import LOSSES

    d, e, k = traces.d_model, traces.num_experts, traces.top_k
    net = build_predictor(arch, d, e, hidden).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=PREDICTOR_LR)
    x = torch.randn(PREDICTOR_BATCH, d, device=device)  # [B, d]
    s = torch.randn(PREDICTOR_BATCH, e, device=device).softmax(-1)  # [B, E]
    idx = s.topk(k, dim=-1).indices  # [B, k]

    def step() -> None:
        out = LOSSES[loss](net(x), s, idx)
        opt.zero_grad()
        out.backward()
        opt.step()
        out.item()  # train_bank reads the loss every step

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    step_s = (time.perf_counter() - t0) / 20
    steps = max(1, int(0.9 * traces.samples) // PREDICTOR_BATCH)
    epoch_s = steps * step_s * 1.2 + 0.05  # + the held-out pass after each epoch
    per_layer_io = 0.5 + traces.samples * traces.d_model * 2 / 1e9  # reading one layer's samples
    fit = (budget_s / traces.num_layers - per_layer_io) / epoch_s
    return max(1, min(30, int(fit))), step_s


def _condensed(report: dict) -> dict:
    """train_bank's report without the per-epoch histories."""
    layers = [{k: v for k, v in r.items() if k != "history"} for r in report["layers"]]
    return {**{k: v for k, v in report.items() if k != "layers"}, "layers": layers}


def train_pairs(
    run,
    traces,
    chat_traces,
    *,
    hidden: int,
    work: Path,
    device: str,
    deadline: float,
    reserve: float,
    seed: int,
    epoch_cap: int | None,
    latency_iters: int,
) -> dict:
    """Train, save and evaluate both pairings; every result is recorded in `run` as soon as it exists."""
    from predictors.bundle import bundle_manifest, save_bundle
    from predictors.evaluate import evaluate
    from predictors.train import train_bank

    k, e = traces.top_k, traces.num_experts
    sweep = list(range(k, min(e, 3 * k) + 1))  # holds the paper's 10-of-6 for top-6
    results: dict = {}
    for n, (arch, loss) in enumerate(PAIRS):
        pair = f"arch{arch}_{loss}"
        budget = max(1.0, (run.left(deadline) - reserve) / (len(PAIRS) - n))
        epochs, step_s = plan_epochs(budget, traces, arch, loss, hidden, device)
        epochs = min(epochs, epoch_cap or epochs)
        run.say(
            f"{pair}: {budget:.0f} s to train, a step takes {1e3 * step_s:.2f} ms -> at most {epochs} epochs"
        )
        t0 = time.monotonic()
        bank, rep = train_bank(
            traces,
            arch,
            loss,
            hidden=hidden,
            epochs=epochs,
            batch_size=PREDICTOR_BATCH,
            lr=PREDICTOR_LR,
            device=device,
            seed=seed,
            progress=False,
        )
        train_s = time.monotonic() - t0
        manifest = bundle_manifest(traces.manifest, rep)
        bundle_dir = save_bundle(work / f"bundle_{pair}", bank, manifest)
        kw = {
            "sweep": sweep,
            "device": device,
            "latency_iters": latency_iters,
            "bundle_path": str(bundle_dir),
        }
        on_mmlu = evaluate(bank, manifest, traces, **kw)
        on_chat = evaluate(bank, manifest, chat_traces, split="all", **kw)
        o, c = on_mmlu["overall"]["predictor"], on_chat["overall"]["predictor"]
        run.say(
            f"{pair}: trained in {train_s:.0f} s; held-out MMLU recall@k {o['recall_at_k']:.4f}, set "
            f"{o['set_accuracy']:.4f}, top-1 {o['top1_accuracy']:.4f}, r@k' {o['overprov_recall']:.4f}, "
            f"{o['latency_ms_median']:.3f} ms; chat recall@k {c['recall_at_k']:.4f}"
        )
        results[pair] = {
            "arch": arch,
            "loss": loss,
            "hidden": hidden,
            "epochs_planned": epochs,
            "probe_step_ms": 1e3 * step_s,
            "train_seconds": train_s,
            "training": _condensed(rep),
            "mmlu_heldout": on_mmlu,
            "chat": on_chat,
            "bundle_dir": str(bundle_dir),
        }
        run.put("predictors", results, phase=f"predictors_{pair}")
    return results


def ship_bundle(
    run, results: dict, traces, prompts: list[str], model, tokenizer, ckpt: Path, work: Path
) -> dict:
    """Copy the better bundle into `ckpt/predictors` with its check prompts and measured check; returns it."""
    from bench.builtin_pack import shipped_check, write_check_prompts

    best = max(results, key=lambda p: results[p]["mmlu_heldout"]["overall"]["predictor"]["recall_at_k"])
    dst = ckpt / "predictors"
    shutil.copytree(results[best]["bundle_dir"], dst, dirs_exist_ok=True)
    cfg = results[best]["training"]["config"]
    _, held = traces.split(cfg["holdout_frac"], cfg["seed"])
    held_ids = traces.prompt_ids()[held].unique()[:CHECK_PROMPTS].tolist()
    write_check_prompts(dst, [prompts[i] for i in held_ids])
    check = shipped_check(model.to("cpu"), tokenizer, dst, work / "traces_check")
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shipped_check"] = {**check, "prompts_file": "heldout_prompts.jsonl", "pair": best}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    run.say(
        f"shipped {best}: on {check['prompts']} held-out check prompts recall@k {check['recall_at_k']:.4f} "
        f"(CPU latency {check['cpu_latency_ms_median']:.3f} ms per layer)"
    )
    shipped = {"pair": best, "check": check}
    run.put("shipped", shipped)
    return shipped
