"""Training a decoder-only MoE LM from scratch for `bench/train_moe.py`: model sizes, the loop, perplexity.

Shape legend: B = rows per micro-batch, T = sequence length, V = vocabulary.

Choices (documented in docs/builtin-model.md):
- transformers' Qwen3-MoE (`Qwen3MoeForCausalLM`), SDPA attention, the router's load-balancing auxiliary
  loss on (`output_router_logits=True`, coefficient `router_aux_loss_coef` = 0.01, added to the LM loss).
- fp32 master weights, bf16 autocast on CUDA; routed experts as grouped GEMMs (bench/lm_experts.py).
  No torch.compile.
- AdamW (fused on CUDA), betas (0.9, 0.95), weight decay 0.1 on matrices (not on norms), grad-norm clip 1.0.
- Schedule by wall clock: linear warmup over the first `warmup_steps` steps, times a cosine from 1 to
  `min_lr_frac` over the time budget; training stops when the budget is spent.
- Rows are random windows of T tokens: a fixed share from the chat stream, the rest from the books.
- Every `eval_every_s` the loss on a fixed selection slice of Gutenberg-valid (its last windows) is measured
  and the best weights are kept; the reported perplexities use the windows before that slice.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class TrainPlan:
    seq_len: int = 1024
    micro_batch: int = 64  # rows per forward pass
    accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    chat_share: float = 0.1  # share of rows drawn from the chat stream
    eval_every_s: float = 30.0
    select_windows: int = 64  # Gutenberg-valid windows used to pick the best weights


# The smoke runs' schedule (CPU, seconds): `--smoke` of bench/train_moe.py and bench/train_twin.py
SMOKE_PLAN = TrainPlan(
    seq_len=64, micro_batch=8, lr=3e-3, warmup_steps=5, eval_every_s=2.0, select_windows=4, chat_share=0.25
)


@dataclass(frozen=True)
class Size:
    name: str
    config: dict  # Qwen3MoeConfig keyword arguments (vocab_size added at build time)
    plan: TrainPlan
    minutes: float  # training time
    predictor_hidden: int
    max_samples: int  # MMLU trace samples (tokens)
    chat_samples: int  # chat-prompt trace samples (out-of-domain check)
    twin_prompts: int  # prompts traced on the random-weight twin for the routing statistics
    pack: bool  # write the built-in checkpoint tarball


def _builtin_kwargs() -> dict:
    from engine.model.builtin import builtin_config

    cfg = builtin_config(4096)
    keys = (
        "hidden_size",
        "intermediate_size",
        "moe_intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_experts",
        "num_experts_per_tok",
        "norm_topk_prob",
        "router_aux_loss_coef",
        "max_position_embeddings",
        "tie_word_embeddings",
    )
    return {k: getattr(cfg, k) for k in keys}


BENCH_CONFIG = {  # DeepSeek-V2-Lite's routing (64 routed experts, top-6), Qwen3-MoE blocks, no shared expert
    "hidden_size": 512,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "num_experts": 64,
    "num_experts_per_tok": 6,
    "norm_topk_prob": True,
    "router_aux_loss_coef": 0.01,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def size_named(name: str, smoke: bool = False) -> Size:
    """`builtin` or `bench`; `smoke` keeps the pipeline but shrinks everything to a CPU toy."""
    if name == "builtin":
        size = Size(
            "builtin",
            _builtin_kwargs(),
            TrainPlan(micro_batch=64, lr=3e-3),
            minutes=4.5,
            predictor_hidden=256,
            max_samples=500_000,
            chat_samples=60_000,
            twin_prompts=600,
            pack=True,
        )
    elif name == "bench":
        size = Size(
            "bench",
            dict(BENCH_CONFIG),
            TrainPlan(micro_batch=32, lr=1.5e-3),
            minutes=5.0,
            predictor_hidden=2048,
            max_samples=300_000,
            chat_samples=60_000,
            twin_prompts=400,
            pack=False,
        )
    else:
        raise ValueError(f"unknown size {name!r}: builtin or bench")
    if not smoke:
        return size
    tiny = dict(size.config)
    tiny.update(
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2 if name == "builtin" else 3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=8 if name == "builtin" else 16,
        num_experts_per_tok=2 if name == "builtin" else 4,
        max_position_embeddings=64,
    )
    return Size(
        name,
        tiny,
        SMOKE_PLAN,
        minutes=0.05,
        predictor_hidden=32,
        max_samples=3000,
        chat_samples=600,
        twin_prompts=20,
        pack=size.pack,
    )


def build_model(size: Size, vocab_size: int, device: torch.device, seed: int) -> nn.Module:
    """A freshly initialised Qwen3-MoE of `size` in float32 on `device` (transformers' init, seeded)."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    cfg = Qwen3MoeConfig(
        vocab_size=vocab_size, bos_token_id=None, eos_token_id=2, pad_token_id=0, **size.config
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    return model.to(device)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Total parameters (tied weights once) and parameters used per token (top-k of the routed experts)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - expert + expert * cfg.num_experts_per_tok // cfg.num_experts
    return {"total": int(total), "routed_experts": int(expert), "active_per_token": int(active)}


# ----------------------------------------------------------------------------- data on the device
class Windows:
    """Random training windows [B, T] from the books and chat streams, drawn on the device."""

    def __init__(self, books: np.ndarray, chat: np.ndarray, seq_len: int, device: torch.device, seed: int):
        self.books = torch.from_numpy(books.astype(np.int32)).to(device)
        self.chat = torch.from_numpy(chat.astype(np.int32)).to(device) if chat.size > seq_len else None
        self.seq_len = seq_len
        self.offsets = torch.arange(seq_len, device=device)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def _rows(self, stream: torch.Tensor, n: int) -> torch.Tensor:
        starts = torch.randint(
            0, stream.numel() - self.seq_len, (n,), generator=self.gen, device=stream.device
        )
        return stream[starts[:, None] + self.offsets]  # [n, T]

    def sample(self, rows: int, chat_share: float) -> torch.Tensor:
        n_chat = round(rows * chat_share) if self.chat is not None else 0
        parts = [self._rows(self.books, rows - n_chat)]
        if n_chat:
            parts.append(self._rows(self.chat, n_chat))
        return torch.cat(parts).long()  # [B, T]


def heldout_windows(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows [N, T] covering the stream (the tail shorter than T dropped)."""
    n = stream.size // seq_len
    return torch.from_numpy(stream[: n * seq_len].astype(np.int64)).view(n, seq_len)


@torch.no_grad()
def window_nll(
    model: nn.Module, windows: torch.Tensor, bytes_per_token: torch.Tensor, device: torch.device, batch: int
) -> dict:
    """Sum of next-token NLL (nats) over `windows` [N, T], the tokens predicted and the bytes they spell."""
    model.eval()
    nll, tokens, nbytes = 0.0, 0, 0
    cuda = device.type == "cuda"
    for s in range(0, windows.shape[0], batch):
        x = windows[s : s + batch].to(device)  # [b, T]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=x, use_cache=False).logits  # [b, T, V]
        target = x[:, 1:]  # [b, T-1]
        nll += float(F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), reduction="sum"))
        tokens += target.numel()
        nbytes += int(bytes_per_token.to(device)[target].sum())
    return {"nll": nll, "tokens": tokens, "bytes": nbytes}


def perplexity(
    model, stream: np.ndarray, bytes_per_token: np.ndarray, seq_len: int, device, batch: int
) -> dict:
    """Per-token perplexity and bits per byte of `stream`, non-overlapping windows of `seq_len`."""
    r = window_nll(model, heldout_windows(stream, seq_len), torch.from_numpy(bytes_per_token), device, batch)
    if r["tokens"] == 0:
        return {"tokens": 0}
    return {
        "tokens": r["tokens"],
        "bytes": r["bytes"],
        "nll_per_token": r["nll"] / r["tokens"],
        "ppl": math.exp(r["nll"] / r["tokens"]),
        "bits_per_byte": r["nll"] / math.log(2) / max(1, r["bytes"]),
    }


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    micro_batch: int = 0
    accum: int = 0
    best_select_loss: float = float("inf")
    best_step: int = 0
    curve: list = field(default_factory=list)  # [seconds, step, tokens, lm loss, aux loss, lr]
    evals: list = field(default_factory=list)  # [seconds, step, selection loss]


def _optimizer(model: nn.Module, plan: TrainPlan, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": plan.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=plan.lr, betas=plan.betas, fused=device.type == "cuda")


def lr_at(plan: TrainPlan, step: int, progress: float) -> float:
    """Linear warmup by step, times a cosine from 1 to min_lr_frac by the share of the time budget spent."""
    warm = min(1.0, (step + 1) / plan.warmup_steps)
    cos = plan.min_lr_frac + (1 - plan.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return plan.lr * warm * cos


def train_lm(
    model: nn.Module,
    windows: Windows,
    select: torch.Tensor,
    bytes_per_token: np.ndarray,
    plan: TrainPlan,
    minutes: float,
    device: torch.device,
    say=print,
) -> dict:
    """Train `model` in place for `minutes` of wall clock; returns the training report (best weights loaded)."""
    opt = _optimizer(model, plan, device)
    cuda = device.type == "cuda"
    bpt = torch.from_numpy(bytes_per_token)
    st = TrainState(micro_batch=plan.micro_batch, accum=plan.accum)
    best_state = None
    t0 = time.perf_counter()
    budget = minutes * 60.0
    next_eval, next_log = plan.eval_every_s, 10.0
    lm_acc = torch.zeros((), device=device)
    aux_acc = torch.zeros((), device=device)
    acc_n = 0

    def evaluate_select() -> None:
        nonlocal best_state
        r = window_nll(model, select, bpt, device, batch=max(1, st.micro_batch))
        loss = r["nll"] / max(1, r["tokens"])
        el = time.perf_counter() - t0
        st.evals.append([round(el, 1), st.step, loss])
        if loss < st.best_select_loss:
            st.best_select_loss, st.best_step = loss, st.step
            best_state = copy.deepcopy(model.state_dict())
        say(f"step {st.step}: Gutenberg-valid selection loss {loss:.4f} (best {st.best_select_loss:.4f})")
        model.train()

    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            break
        lr = lr_at(plan, st.step, elapsed / budget)
        for g in opt.param_groups:
            g["lr"] = lr
        try:
            for _ in range(st.accum):
                x = windows.sample(st.micro_batch, plan.chat_share)  # [B, T]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    out = model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
                (out.loss / st.accum).backward()
                aux = out.aux_loss.detach().float()
                lm_acc += out.loss.detach().float() - model.config.router_aux_loss_coef * aux
                aux_acc += aux
                acc_n += 1
        except torch.cuda.OutOfMemoryError:
            if st.step > 0 or st.micro_batch == 1:
                raise
            opt.zero_grad(set_to_none=True)
            out = None
            torch.cuda.empty_cache()
            st.micro_batch, st.accum = st.micro_batch // 2, st.accum * 2
            say(
                f"out of memory on the first step: micro-batch {st.micro_batch} x {st.accum} accumulation steps"
            )
            lm_acc.zero_(), aux_acc.zero_()
            acc_n = 0
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        st.step += 1
        st.tokens += st.micro_batch * st.accum * windows.seq_len
        elapsed = time.perf_counter() - t0
        if elapsed >= next_log or st.step == 1:
            lm, ax = float(lm_acc) / acc_n, float(aux_acc) / acc_n
            st.curve.append([round(elapsed, 1), st.step, st.tokens, lm, ax, lr])
            say(
                f"step {st.step} ({st.tokens / 1e6:.1f} M tokens, {elapsed:.0f} s): lm loss {lm:.4f} aux {ax:.4f} lr {lr:.2e}"
            )
            lm_acc.zero_(), aux_acc.zero_()
            acc_n = 0
            next_log = elapsed + 10.0
        if elapsed >= next_eval:
            evaluate_select()
            next_eval = elapsed + plan.eval_every_s
    if cuda:
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0
    evaluate_select()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "plan": asdict(plan),
        "minutes_budget": minutes,
        "train_seconds": train_s,
        "steps": st.step,
        "tokens_seen": st.tokens,
        "tokens_per_second": st.tokens / max(train_s, 1e-9),
        "micro_batch": st.micro_batch,
        "accum": st.accum,
        "tokens_per_step": st.micro_batch * st.accum * windows.seq_len,
        "best_step": st.best_step,
        "best_selection_loss": st.best_select_loss,
        "curve": st.curve,
        "selection_evals": st.evals,
    }
