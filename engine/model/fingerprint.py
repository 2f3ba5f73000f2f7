"""A model fingerprint that ties traces and predictor bundles to the model they were made from.

sha256 over (1) the config essentials as canonical JSON: model_type, hidden_size, the number of MoE layers
and their decoder-layer indices, the number of routed experts, top-k; and (2) every MoE layer's router
parameters (weight, then bias if any), each first rounded to bfloat16, then cast to float32, copied to the
CPU and hashed as little-endian bytes. Rounding to bf16 first makes fp32 and bf16 loads of one checkpoint
agree (bf16 of an fp32 value is the value a bf16 load holds); any other change to a router changes the hash.

The engine checks bundles and routing recordings against it; `predictors` writes it into traces and
bundles. Imports `engine.model.model_map` only.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from engine.model.model_map import find_moe_layers, top_k_of


def model_essentials(model: nn.Module) -> dict[str, object]:
    """The config facts a predictor bundle depends on (shapes and routing), from the model object."""
    layers = find_moe_layers(model)
    router_w = layers[0].router.weight
    return {
        "model_type": str(getattr(model.config, "model_type", type(model).__name__)),
        "hidden_size": int(model.config.hidden_size),
        "num_moe_layers": len(layers),
        "layer_ids": [layer.layer_id for layer in layers],
        "num_experts": int(router_w.shape[0]),
        "top_k": top_k_of(model),
    }


def router_params(router: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The router's weight [E, d] and, when it has one, its bias [E]."""
    out = [("weight", router.weight)]
    bias = getattr(router, "bias", None)
    if isinstance(bias, torch.Tensor):
        out.append(("bias", bias))
    return out


def _canonical_bytes(t: torch.Tensor) -> bytes:
    if t.device.type == "meta":
        raise ValueError("cannot fingerprint a model whose router weights are still on the meta device")
    return t.detach().to("cpu").to(torch.bfloat16).to(torch.float32).contiguous().numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """Hex sha256 of the config essentials and the bf16-rounded router weights of every MoE layer."""
    h = hashlib.sha256()
    h.update(json.dumps(model_essentials(model), sort_keys=True).encode())
    for layer in find_moe_layers(model):
        for name, p in router_params(layer.router):
            h.update(f"|{layer.layer_id}.{name}:{list(p.shape)}|".encode())
            h.update(_canonical_bytes(p))
    return h.hexdigest()
