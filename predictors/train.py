"""Training: one predictor per MoE layer from a trace set, held-out split by prompt, early stopping.

Decisions (the paper leaves them open; see docs/predictors.md):
- AdamW (betas 0.9/0.999, weight decay 0.01), lr 1e-3, batch 1024 samples; the learning rate warms up
  linearly over the first 5% of the planned steps, then follows a cosine to 0 at the last planned step.
- Held-out split by prompt (a seeded random 10% of the prompts; every token of a prompt on one side), so
  no held-out token shares a prompt (and its near-duplicate neighbouring states) with training.
- After every epoch: held-out recall@k; the best epoch's weights are kept; training of a layer stops
  after `patience` epochs without improvement (30 epochs at most, as in the paper).
- Layers are trained one after another, each loading only its own samples (memory ~ N x d per layer);
  on CUDA a layer's samples move to the GPU when they fit in `device_budget_bytes`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.prefetch.nets import PredictorBank
from predictors.losses import LOSSES, loss_constants
from predictors.metrics import all_metrics, default_k_prime
from predictors.traces import TraceSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    arch: int = 1
    loss: str = "rank_bce"
    loss_consts: dict = field(default_factory=dict)
    hidden: int = 2048
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    holdout_frac: float = 0.1
    patience: int = 3
    seed: int = 0


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def warmup_cosine(total_steps: int, warmup_frac: float):
    """LambdaLR factor: linear warmup over warmup_frac of the steps, then cosine from 1 to 0."""
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@torch.no_grad()
def predict_scores(
    predictor: torch.nn.Module, x: torch.Tensor, device: str, chunk: int = 8192
) -> torch.Tensor:
    """scores[N, E] on the CPU for x[N, d], in eval mode, chunk by chunk, computed on `device` (the
    predictor is moved there for the call and back after: a trained bank is handed back on the CPU)."""
    predictor.eval()
    home = next(predictor.parameters()).device
    predictor.to(device)
    try:
        out = [
            predictor(x[s : s + chunk].to(device).float()).float().cpu() for s in range(0, x.shape[0], chunk)
        ]
    finally:
        predictor.to(home)
    return torch.cat(out)


def _place(t: torch.Tensor, device: str, budget: int) -> torch.Tensor:
    if device != "cpu" and t.numel() * t.element_size() <= budget:
        return t.to(device)
    return t


def train_layer(
    i: int,
    x: torch.Tensor,
    scores: torch.Tensor,
    topk: torch.Tensor,
    held: tuple[torch.Tensor, ...],
    bank: PredictorBank,
    cfg: TrainConfig,
    device: str,
    bar: Progress,
    budget: int,
) -> dict[str, object]:
    """Train bank.layers[i] in place on (x, scores, topk); evaluate on held = (x, scores, topk)."""
    loss_fn, consts = LOSSES[cfg.loss], loss_constants(cfg.loss, cfg.loss_consts)
    predictor = bank.layers[i].to(device)
    x, scores, topk = (_place(t, device, budget) for t in (x, scores, topk))
    n = x.shape[0]
    steps_per_epoch = max(1, n // cfg.batch_size)  # the last partial batch is dropped (reshuffled each epoch)
    opt = torch.optim.AdamW(predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.epochs * steps_per_epoch, cfg.warmup_frac)
    )
    gen = torch.Generator().manual_seed(cfg.seed + i)
    k_prime = default_k_prime(topk.shape[1], scores.shape[1])
    best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
    task = bar.add_task(f"layer {i}", total=cfg.epochs * steps_per_epoch)
    for epoch in range(1, cfg.epochs + 1):
        predictor.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            idx = idx.to(x.device)
            xb = x[idx].to(device, non_blocking=True).float()  # [B, d]
            loss = loss_fn(predictor(xb), scores[idx].to(device), topk[idx].to(device), **consts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.advance(task)
        held_scores = predict_scores(predictor, held[0], device)
        m = {**all_metrics(held_scores, held[2], k_prime), "k_prime": k_prime}
        history.append({"epoch": epoch, "train_loss": total / steps_per_epoch, **m})
        if m["recall_at_k"] > best:
            best, best_epoch, stale = m["recall_at_k"], epoch, 0
            best_state = copy.deepcopy(predictor.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.update(task, completed=cfg.epochs * steps_per_epoch)
    predictor.load_state_dict(best_state)
    predictor.eval()
    final = next(h for h in history if h["epoch"] == best_epoch)
    log.info("layer %d: best epoch %d, held-out recall@k %.4f", i, best_epoch, best)
    return {"layer": i, "best_epoch": best_epoch, "epochs_run": len(history), **final, "history": history}


def train_bank(
    traces: TraceSet,
    arch: int = 1,
    loss: str = "rank_bce",
    *,
    hidden: int = 2048,
    epochs: int = 30,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    holdout_frac: float = 0.1,
    patience: int = 3,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    loss_consts: dict | None = None,
    warmup_frac: float = 0.05,
    device_budget_bytes: int = 8 << 30,
) -> tuple[PredictorBank, dict]:
    """Train one predictor per MoE layer of `traces`; returns the bank (eval mode, CPU) and a JSON-able report."""
    cfg = TrainConfig(
        arch=arch,
        loss=loss,
        loss_consts=dict(loss_consts or {}),
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_frac=warmup_frac,
        holdout_frac=holdout_frac,
        patience=patience,
        seed=seed,
    )
    consts = loss_constants(loss, cfg.loss_consts)  # validates the loss name and constants up front
    device = device or default_device()
    torch.manual_seed(seed)
    bank = PredictorBank(arch, traces.d_model, traces.num_experts, traces.num_layers, hidden)
    train_mask, held_mask = traces.split(holdout_frac, seed)
    pid = traces.prompt_ids()
    layers = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        for i in range(traces.num_layers):
            data = traces.layer(i)
            held = (data.x[held_mask], data.scores[held_mask], data.topk[held_mask])
            tr = (data.x[train_mask], data.scores[train_mask], data.topk[train_mask])
            del data
            bank.expert_counts[i] = torch.bincount(tr[2].reshape(-1), minlength=traces.num_experts).float()
            layers.append(train_layer(i, *tr, held, bank, cfg, device, bar, device_budget_bytes))
    bank.to("cpu").eval()
    mean = {
        key: sum(r[key] for r in layers) / len(layers)
        for key in ("recall_at_k", "set_accuracy", "top1_accuracy", "overprov_recall")
    }
    report = {
        "config": {**asdict(cfg), "loss_consts": consts, "device": device},
        "data": {
            **traces.summary(),
            "train_samples": int(train_mask.sum()),
            "heldout_samples": int(held_mask.sum()),
            "train_prompts": int(pid[train_mask].unique().numel()),
            "heldout_prompts": int(pid[held_mask].unique().numel()),
        },
        "heldout_mean": mean,
        "layers": layers,
    }
    return bank, report
