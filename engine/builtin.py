"""The built-in model served when MOE_MODEL is unset: a small Qwen3-MoE with a real tokenizer.

It builds offline and deterministically in a second on the CPU: the byte-level BPE tokenizer is a
committed artefact (`engine/builtin/tokenizer.json`, made by `bench/build_builtin_tokenizer.py`),
the weights are drawn from a fixed seed. Hook point for a trained model: if
`engine/builtin/model.safetensors` (a full checkpoint folder with config.json) exists, it is loaded
through the normal checkpoint loader instead, with its predictor bundle from
`engine/builtin/predictors/` when present.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.loader import CacheBudget, OffloadedModel, load_checkpoint, offload

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_NAME = "moe-prefetch-builtin"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def trained_checkpoint() -> Path | None:
    return (
        BUILTIN_DIR
        if (BUILTIN_DIR / "config.json").exists() and any(BUILTIN_DIR.glob("*.safetensors"))
        else None
    )


def builtin_predictors() -> Path | None:
    p = BUILTIN_DIR / "predictors"
    return p if (p / "manifest.json").exists() else None


def builtin_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(BUILTIN_DIR / "tokenizer.json"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def builtin_config(vocab_size: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=16,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )


def load_builtin(
    device: torch.device, dtype: torch.dtype, budget: CacheBudget, seed: int = 0
) -> OffloadedModel:
    ckpt = trained_checkpoint()
    if ckpt is not None:
        return load_checkpoint(ckpt, device, dtype, budget)
    from transformers import AutoModelForCausalLM

    tok = builtin_tokenizer()
    cfg = builtin_config(len(tok))
    cfg.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return offload(model, device, dtype, budget, f"builtin:{BUILTIN_NAME}", tokenizer=tok)
