"""Tiny random checkpoints of every MoE family we cover, built from transformers config classes.

Weights are scaled up from the default init so logits have clear margins: greedy-token equality
tests then compare real decisions, not ties broken by rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def family_configs() -> dict:
    from transformers import (
        DeepseekV2Config,
        GptOssConfig,
        GraniteMoeConfig,
        MixtralConfig,
        OlmoeConfig,
        PhimoeConfig,
        Qwen2MoeConfig,
        Qwen3MoeConfig,
    )

    return {
        "qwen3_moe": Qwen3MoeConfig(
            **COMMON,
            head_dim=16,
            intermediate_size=96,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
        ),
        "qwen2_moe": Qwen2MoeConfig(
            **COMMON,
            intermediate_size=96,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=2,
        ),
        "mixtral": MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=6, num_experts_per_tok=2),
        "olmoe": OlmoeConfig(**COMMON, intermediate_size=32, num_experts=8, num_experts_per_tok=2),
        "deepseek_v2": DeepseekV2Config(
            **{
                **COMMON,
                "num_key_value_heads": 4,
            },  # MLA: as many KV heads as query heads, as in the real models
            intermediate_size=96,
            moe_intermediate_size=32,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            topk_method="group_limited_greedy",
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            routed_scaling_factor=1.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        "phimoe": PhimoeConfig(**COMMON, intermediate_size=48, num_local_experts=6, num_experts_per_tok=2),
        "granitemoe": GraniteMoeConfig(
            **COMMON, intermediate_size=32, num_local_experts=6, num_experts_per_tok=2
        ),
        "gpt_oss": GptOssConfig(
            **{**COMMON, "num_hidden_layers": 2},
            head_dim=16,
            intermediate_size=32,
            num_local_experts=8,
            num_experts_per_tok=2,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
        ),
    }


FAMILIES = sorted(family_configs())


def family_config(family: str, **overrides):
    """`family`'s tiny config with `overrides` given to its config class, so derived fields (layer_types
    from use_sliding_window, ...) follow them."""
    cfg = family_configs()[family]
    if not overrides:
        return cfg
    fields = {**cfg.to_dict(), **overrides}
    if "layer_types" not in overrides:
        fields.pop("layer_types", None)
    return type(cfg)(**fields)


def build_model(family: str, seed: int = 0, scale: float = 4.0, **overrides):
    """A random model of `family` in float32 on CPU, weights scaled by `scale` for clear logit margins."""
    cfg = family_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(scale)
            elif "bias" in name:
                p.normal_(0.0, 0.05)
    model.eval()
    return model


def write_checkpoint(family: str, out: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random checkpoint of `family` (safetensors + config) under `out` and return it."""
    model = build_model(family, seed, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def greedy_reference(checkpoint: Path, prompt: list[int], new_tokens: int, device: str = "cpu") -> list[int]:
    """Greedy tokens of the unmodified transformers model (float32) loaded from `checkpoint` on `device`."""
    ref = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt], device=device),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def decode_rows(runner, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy tokens of `prompts` decoded together by a ModelRunner in rows 0..n-1 (each prefilled first)."""
    toks, pos = [], []
    for row, p in enumerate(prompts):
        toks.append([int(torch.argmax(runner.prefill(row, p)))])
        pos.append(len(p))
    for _ in range(new_tokens - 1):
        logits = runner.decode([t[-1] for t in toks], pos)
        for i, t in enumerate(toks):
            t.append(int(torch.argmax(logits[i])))
            pos[i] += 1
    return toks
