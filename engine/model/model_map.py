"""Finds the MoE structure of any transformers v5 model, without per-family code.

A routed-experts module is any module made by transformers' `@use_experts_implementation` (it has
`has_gate` and `is_transposed` and 3-D expert weights). Its parent is the MoE block; the block's
router is the sibling that returns `(logits, weights, indices)` (named `gate` or `router` in every
family we know, found by its `[E, hidden]` weight otherwise). The decoder layer that holds the block
gives the `input_layernorm` the predictor reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EXPERT_PARAM_NAMES = (
    "gate_up_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj_bias",
    "up_proj_bias",
    "down_proj_bias",
)


@dataclass
class MoELayer:
    index: int  # position among MoE layers (0..L-1), used by the cache and the predictors
    layer_id: int  # decoder-layer index in the model
    decoder_layer: nn.Module
    input_layernorm: nn.Module
    block: nn.Module  # the sparse MoE block (parent of experts)
    experts: nn.Module
    router: nn.Module
    experts_path: str  # dotted name of the experts module


def is_experts_module(module: nn.Module) -> bool:
    return (
        hasattr(module, "has_gate")
        and hasattr(module, "is_transposed")
        and (hasattr(module, "gate_up_proj") or hasattr(module, "up_proj"))
    )


def expert_param_names(experts: nn.Module) -> list[str]:
    """The per-expert parameters of an experts module, in storage order (each has experts on dim 0)."""
    names = []
    for name in EXPERT_PARAM_NAMES:
        p = getattr(experts, name, None)
        if isinstance(p, torch.Tensor) and p.dim() >= 2:
            names.append(name)
    return names


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    for path in ("model.layers", "layers", "model.decoder.layers", "transformer.h"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise ValueError(f"{type(model).__name__}: cannot find the decoder layers (model.layers)")


def _find_router(block: nn.Module, experts: nn.Module) -> nn.Module:
    for name in ("gate", "router"):
        m = getattr(block, name, None)
        if isinstance(m, nn.Module) and m is not experts:
            return m
    num_experts = int(experts.num_experts)
    for _, m in block.named_children():
        w = getattr(m, "weight", None)
        if m is not experts and isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == num_experts:
            return m
    raise ValueError(f"{type(block).__name__}: cannot find the router next to the experts")


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every decoder layer that has routed experts, in order. Raises if the model has none."""
    names = {id(m): n for n, m in model.named_modules()}
    layers = []
    for layer_id, dec in enumerate(_decoder_layers(model)):
        experts = next((m for m in dec.modules() if is_experts_module(m)), None)
        if experts is None:
            continue  # a dense layer (e.g. DeepSeek-V2's first layers)
        path = names[id(experts)]
        block = model.get_submodule(path.rsplit(".", 1)[0])
        norm = getattr(dec, "input_layernorm", None)
        if norm is None:
            raise ValueError(f"{type(dec).__name__}: no input_layernorm to read the pre-attention state from")
        layers.append(
            MoELayer(
                index=len(layers),
                layer_id=layer_id,
                decoder_layer=dec,
                input_layernorm=norm,
                block=block,
                experts=experts,
                router=_find_router(block, experts),
                experts_path=path,
            )
        )
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no routed experts built with transformers' Experts modules: not an MoE model?"
        )
    return layers


def top_k_of(model: nn.Module) -> int:
    cfg = model.config
    for name in ("num_experts_per_tok", "moe_topk", "top_k"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"{type(cfg).__name__}: cannot find the number of experts per token")


def fix_latent_attention_groups(model: nn.Module) -> int:
    """Multi-head latent attention (DeepSeek-V2/V3) expands its keys and values to one head per query head
    (`kv_b_proj`), yet transformers derives `num_key_value_groups` from `num_key_value_heads`, so a config
    with fewer KV heads than query heads makes sdpa repeat keys that are already full width (transformers
    itself only works there when it passes no mask, which the static KV runner always does). Such modules
    get `num_key_value_groups = 1`, which is what their keys are; returns how many were changed."""
    changed = 0
    for module in model.modules():
        heads = getattr(module, "num_heads", None)
        if heads is None or not hasattr(module, "kv_b_proj"):
            continue
        if getattr(module, "num_key_value_groups", 1) != 1:
            module.num_key_value_groups = 1
            changed += 1
    return changed
