"""The built-in model served when MOE_MODEL is unset: a small Qwen3-MoE with a real tokenizer.

Two forms, one shape (`builtin_config`):
- trained: `engine/model/assets/` holds a checkpoint folder (config.json, model.safetensors in bf16) made by
  `bench/train_moe.py --size builtin` on public-domain books (see docs/builtin-model.md and
  `engine/model/assets/ATTRIBUTION.md`), with its predictor bundle in `engine/model/assets/predictors/`. It loads
  through the normal checkpoint loader, with the committed tokenizer and chat template below.
- random: without that checkpoint, the same shape drawn from a fixed seed (token embeddings with std 1, as
  `engine.model.loader.build_synthetic` explains), so a fresh clone still serves.

The byte-level BPE tokenizer (`engine/model/assets/tokenizer.json`, made by `bench/build_builtin_tokenizer.py`)
is shared by both. Nothing here reads the environment.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model.loader import CacheBudget, OffloadedModel, load_checkpoint, offload

BUILTIN_DIR = Path(__file__).resolve().parent / "assets"
BUILTIN_NAME = "moe-prefetch-builtin"
RANDOM_EMBED_STD = 1.0  # token embeddings of the random form (std 0.02 routes most tokens to a few experts)
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
        model_max_length=1024,
    )


def builtin_config(vocab_size: int):
    """The built-in model's shape (also what `bench/train_moe.py --size builtin` trains).

    6 layers, hidden 256, 16 routed experts of width 64, top-2 (Phi-mini-MoE's routing shape), tied
    embeddings: 6.98 M parameters, 14 MB in bf16. Context 1024 tokens, the training sequence length.
    """
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,  # dense MLP width; unused, every layer is MoE
        moe_intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=16,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        router_aux_loss_coef=0.01,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )


def load_builtin(
    device: torch.device, dtype: torch.dtype, budget: CacheBudget, seed: int = 0
) -> OffloadedModel:
    tok = builtin_tokenizer()
    ckpt = trained_checkpoint()
    if ckpt is not None:
        return load_checkpoint(ckpt, device, dtype, budget, tokenizer=tok)
    from transformers import AutoModelForCausalLM

    cfg = builtin_config(len(tok))
    cfg.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():  # as engine.model.loader.build_synthetic: keeps random routing from collapsing
        model.get_input_embeddings().weight.normal_(0.0, RANDOM_EMBED_STD)
    return offload(model, device, dtype, budget, f"builtin:{BUILTIN_NAME}", tokenizer=tok)
