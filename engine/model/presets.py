"""Named shapes of real MoE models, for synthetic random-weight benchmarks (no checkpoint needed).

Shapes follow each model's published config.json; attention details that do not change the expert
traffic (rope scaling, sliding windows) use defaults.
"""

from __future__ import annotations

from transformers import PretrainedConfig

PRESETS = ("qwen3-30b-a3b", "deepseek-v2-lite", "mixtral-8x7b", "phi-mini-moe")


def preset_config(name: str, **overrides: object) -> PretrainedConfig:
    """A transformers config of the named model's shape; `overrides` (e.g. num_hidden_layers) win."""
    from transformers import DeepseekV2Config, MixtralConfig, PhimoeConfig, Qwen3MoeConfig

    key = name.lower()
    if key == "qwen3-30b-a3b":
        kw = dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return Qwen3MoeConfig(**{**kw, **overrides})
    if key == "deepseek-v2-lite":
        kw = dict(
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=10944,
            moe_intermediate_size=1408,
            num_hidden_layers=27,
            num_attention_heads=16,
            num_key_value_heads=16,
            n_shared_experts=2,
            n_routed_experts=64,
            num_experts_per_tok=6,
            first_k_dense_replace=1,
            kv_lora_rank=512,
            q_lora_rank=None,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        return DeepseekV2Config(**{**kw, **overrides})
    if key == "mixtral-8x7b":
        kw = dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
        return MixtralConfig(**{**kw, **overrides})
    if key == "phi-mini-moe":
        kw = dict(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=960,
            num_hidden_layers=32,
            num_attention_heads=16,
            num_key_value_heads=4,
            num_local_experts=16,
            num_experts_per_tok=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
        return PhimoeConfig(**{**kw, **overrides})
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
