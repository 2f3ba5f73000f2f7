"""Routing twins' shapes (`bench/train_twin.py`): the expert topology of a real model at a small width.

Each twin keeps its real model's transformers family, layer count, dense/MoE layout, experts, top-k, shared
experts and routing function (engine.model.presets' real shapes), and shrinks only the widths: hidden 384,
expert width 96, 6 attention heads of 64. Vocabulary: the built-in tokenizer's (4096 ids).

- qwen3-30b-a3b: Qwen3-MoE, 48 MoE layers, 128 experts top-8, softmax then normalised top-k, a per-layer
  load-balancing loss over the whole batch with Qwen3-30B-A3B's coefficient 0.001.
- deepseek-v2-lite: DeepSeek-V2, 27 layers with the first dense, 64 routed experts top-6 plus 2 shared,
  softmax greedy top-6 without normalisation (scaling 1.0), multi-head latent attention (ranks shrunk),
  DeepSeek-V2-Lite's sequence-wise expert balance loss (`aux_loss_alpha` 0.001, `seq_aux`).
- phi-mini-moe: PhiMoE, 32 MoE layers, 16 experts top-2, sparsemixer routing (router jitter 0.01), a
  per-layer Switch load-balancing loss over the batch at 0.001.

The balance loss (`BalanceAux`, `balance_loss`) is the models' own: alpha * sum over MoE layers of
sum_i f_i P_i, with f_i = E/(k T) * (tokens routed to i) and P_i = the mean router probability of i, over
each sequence (DeepSeek) or the whole batch (the others). transformers' own loss (`--aux transformers`, what
the first Qwen3 and Phi twins trained with) concatenates every layer's tokens before counting, so it cannot
see an expert that one layer overuses while another layer neglects it: those twins' routing concentrated on
a subset of experts per layer (usage entropy 0.7-0.8 of the maximum, against 0.96 for the DeepSeek twin)
while that loss read balanced (the retrained Qwen3 twin ended at 7.99, the Phi twin at 2.00: top-k is the
balanced value).

`--smoke` keeps the family and routing but 3 layers (DeepSeek: 1 dense + 2 MoE), hidden 32, 16 experts
top-4 (Phi: 8 top-2), so the whole pipeline runs on a CPU in seconds.
Imports torch, transformers, engine.model.presets and bench.lm_train (the training plan) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.lm_train import SMOKE_PLAN, TrainPlan
from engine.model.presets import preset_config

SHAPES = ("qwen3-30b-a3b", "deepseek-v2-lite", "phi-mini-moe")
HIDDEN, EXPERT_WIDTH, HEADS, HEAD_DIM = 384, 96, 6, 64
DEEPSEEK_AUX_ALPHA = 0.001  # DeepSeek-V2-Lite's config.json: aux_loss_alpha, seq_aux true
BALANCE_ALPHA = 0.001  # Qwen3-30B-A3B's router_aux_loss_coef (and transformers' PhiMoE default)


@dataclass(frozen=True)
class TwinShape:
    name: str
    overrides: dict  # preset_config overrides (the shrunk widths)
    plan: TrainPlan
    predictor_hidden: int = 2048  # the paper's
    trace_tokens: int = 200_000  # MMLU trace tokens for the predictors
    chat_tokens: int = 40_000  # chat-prompt trace tokens (the out-of-domain check)
    cold_streams: int = 32  # WikiText-2 passages of `cold_len` tokens for the cold-cache figures
    cold_len: int = 256
    replay_prompts: int = 64
    replay_tokens: int = 256  # per prompt at most


def _widths(name: str, vocab: int, smoke: bool) -> dict:
    common = dict(
        vocab_size=vocab, bos_token_id=None, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True
    )
    hidden, width, heads, head_dim = (32, 16, 2, 16) if smoke else (HIDDEN, EXPERT_WIDTH, HEADS, HEAD_DIM)
    ctx = 64 if smoke else 1024
    if name == "qwen3-30b-a3b":
        kw = dict(
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            moe_intermediate_size=width,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 3),
            head_dim=head_dim,
            router_aux_loss_coef=0.001,
            max_position_embeddings=ctx,
        )
        if smoke:
            kw.update(num_hidden_layers=3, num_experts=16, num_experts_per_tok=4)
    elif name == "deepseek-v2-lite":
        kw = dict(
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            moe_intermediate_size=width,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            kv_lora_rank=hidden // 4,
            qk_nope_head_dim=head_dim // 2,
            qk_rope_head_dim=head_dim // 4,
            v_head_dim=head_dim,
            head_dim=head_dim // 4,  # transformers' rotary embedding reads head_dim: the rope part
            norm_topk_prob=False,
            max_position_embeddings=ctx,
        )
        if smoke:
            kw.update(num_hidden_layers=3, n_routed_experts=16, num_experts_per_tok=4)
    elif name == "phi-mini-moe":
        kw = dict(
            hidden_size=hidden,
            intermediate_size=width,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 3),
            head_dim=head_dim,
            max_position_embeddings=ctx,
        )
        if smoke:
            kw.update(num_hidden_layers=3, num_local_experts=8)
    else:
        raise ValueError(f"unknown twin shape {name!r}: one of {', '.join(SHAPES)}")
    return {**common, **kw}


def twin_shape(name: str, vocab: int, smoke: bool = False) -> TwinShape:
    """The twin of `name`; `smoke` shrinks it to a CPU toy with the same family and routing."""
    overrides = _widths(name, vocab, smoke)
    if not smoke:
        lr = 1.5e-3 if name == "qwen3-30b-a3b" else 2e-3
        plan = TrainPlan(seq_len=512, micro_batch=32, lr=lr, eval_every_s=60.0)
        if name == "qwen3-30b-a3b":  # 48 MoE layers x 128 experts: fewer tokens, fewer cache replays
            return TwinShape(name, overrides, plan, trace_tokens=120_000, cold_streams=16)
        return TwinShape(name, overrides, plan)
    return TwinShape(
        name,
        overrides,
        SMOKE_PLAN,
        predictor_hidden=32,
        trace_tokens=1500,
        chat_tokens=400,
        cold_streams=4,
        cold_len=48,
        replay_prompts=6,
        replay_tokens=40,
    )


AUX_KINDS = ("per-layer", "transformers")


class BalanceAux(nn.Module):
    """A causal LM whose forward adds the per-layer expert balance loss when asked for router logits (what
    `bench.lm_train.train_lm` reads: `.loss`, `.aux_loss`, `config.router_aux_loss_coef`) instead of the
    family's own. The logits come from forward hooks on the routers (every family's router returns
    `(logits, weights, indices)`; transformers 5.17's DeepSeek-V2 output has no `router_logits`)."""

    def __init__(self, model: nn.Module, alpha: float, per_sequence: bool) -> None:
        super().__init__()
        from engine.model.model_map import find_moe_layers

        self.model = model
        self.config = model.config
        self.config.router_aux_loss_coef = alpha
        self.per_sequence = per_sequence
        self._routers = [layer.router for layer in find_moe_layers(model)]

    def forward(self, input_ids, labels=None, output_router_logits=False, **kw):
        if not (output_router_logits and labels is not None):
            return self.model(input_ids=input_ids, labels=labels, **kw)
        logits: list[torch.Tensor] = []
        hooks = [
            r.register_forward_hook(lambda _m, _i, out: logits.append(out[0])) for r in self._routers
        ]  # out = (logits [B*T, E], weights, ids); the inner model adds no loss of its own
        try:
            out = self.model(input_ids=input_ids, labels=labels, **kw)
        finally:
            for h in hooks:
                h.remove()
        b, t = input_ids.shape
        b, t = (b, t) if self.per_sequence else (1, b * t)
        aux = balance_loss(logits, b, t, int(self.config.num_experts_per_tok))
        out.aux_loss = aux
        out.loss = out.loss + self.config.router_aux_loss_coef * aux
        return out

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


def balance_loss(router_logits: tuple, batch: int, seq: int, k: int) -> torch.Tensor:
    """Sum over MoE layers of sum_i f_i P_i, averaged over `batch` groups of `seq` tokens (the sequences, or
    one group of the whole batch); router_logits[l] [batch*seq, E]. 1.0 per layer when balanced."""
    total = torch.zeros((), device=router_logits[0].device)
    for logits in router_logits:
        e = logits.shape[-1]
        probs = logits.float().softmax(-1).view(batch, seq, e)  # [B, T, E]
        idx = probs.topk(k, dim=-1).indices  # [B, T, k]
        counts = torch.zeros(batch, e, device=probs.device).scatter_add_(
            1, idx.view(batch, -1), torch.ones(batch, seq * k, device=probs.device)
        )  # [B, E]
        f = counts * e / (k * seq)  # [B, E]
        total = total + (f * probs.mean(1)).sum(-1).mean()
    return total


seq_balance_loss = balance_loss  # the name the DeepSeek twin's records were made with


def build_twin(
    shape: TwinShape, device: torch.device, seed: int, aux: str = "per-layer", aux_coef: float | None = None
) -> nn.Module:
    """A freshly initialised twin in float32 on `device` (transformers' init, seeded); SDPA attention.
    `aux`: "per-layer" (`BalanceAux`), or "transformers": the family's own loss (DeepSeek-V2 has none, so
    its twin always takes the per-sequence one). `aux_coef`: the per-layer loss's weight (default: the real
    model's, `DEEPSEEK_AUX_ALPHA` / `BALANCE_ALPHA`)."""
    if aux not in AUX_KINDS:
        raise ValueError(f"aux {aux!r}: one of {', '.join(AUX_KINDS)}")
    if aux_coef is not None and not aux_coef >= 0:
        raise ValueError(f"aux_coef {aux_coef!r}: a weight >= 0")
    from transformers import AutoModelForCausalLM

    from engine.model.model_map import fix_latent_attention_groups

    cfg = preset_config(shape.name, **shape.overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    fix_latent_attention_groups(model)
    if shape.name == "deepseek-v2-lite":
        model = BalanceAux(model, DEEPSEEK_AUX_ALPHA if aux_coef is None else aux_coef, per_sequence=True)
    elif aux == "per-layer":
        model = BalanceAux(model, BALANCE_ALPHA if aux_coef is None else aux_coef, per_sequence=False)
    return model.to(device)


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a twin (BalanceAux wraps one)."""
    return model.model if isinstance(model, BalanceAux) else model


def twin_params(model: nn.Module) -> dict[str, int]:
    """Total parameters (tied once), routed-expert parameters and parameters active per token."""
    m = inner_model(model)
    cfg = m.config
    e = int(
        getattr(cfg, "n_routed_experts", None) or getattr(cfg, "num_local_experts", None) or cfg.num_experts
    )
    total = sum(p.numel() for p in m.parameters())
    expert = sum(p.numel() for n, p in m.named_parameters() if ".experts." in n)
    return {
        "total": int(total),
        "routed_experts": int(expert),
        "active_per_token": int(total - expert + expert * cfg.num_experts_per_tok // e),
    }
