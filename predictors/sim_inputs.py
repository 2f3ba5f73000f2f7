"""What the `simulate` command replays, read and checked: the workload (a trace set or a routing recording),
the model shape it must match (and one routed expert's bytes), the predictor bundle it must match, and
the policies the input and bundle allow by default.

Library code: no argument parsing, no printing. Imports `predictors.simulate`, `engine.api`,
`engine.prefetch.bundle` and `engine.model` (the last two when used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.api.policies import POLICIES
from predictors.simulate import NEEDS_INPUTS, SimulateError, Workload, load_recording, load_traces

DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "float32": 4, "fp32": 4}


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_experts: int
    top_k: int
    expert_bytes: int


def model_shape(spec: str, dtype: str = "bf16") -> ModelShape:
    """The MoE shape and one routed expert's bytes (every weight and bias of its flat row, as the engine's
    store holds it) of a checkpoint folder (its config.json) or an `engine.model.presets` name, built on the meta
    device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.model.model_map import expert_param_names, find_moe_layers, top_k_of
    from engine.model.presets import PRESETS, preset_config

    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_BYTES)}")
    config = preset_config(spec) if spec.lower() in PRESETS else AutoConfig.from_pretrained(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = find_moe_layers(model)
    experts = layers[0].experts
    numel = sum(math.prod(getattr(experts, n).shape[1:]) for n in expert_param_names(experts))
    return ModelShape(len(layers), int(experts.num_experts), top_k_of(model), numel * DTYPE_BYTES[dtype])


def load_workload(
    traces: Path | None, routing: Path | None, model: str | None, dtype: str, max_tokens: int | None
) -> tuple[Workload, ModelShape | None]:
    """The workload of `traces` or of `routing` (the caller gives one), and `model`'s shape when given,
    which the workload must match."""
    shape = model_shape(model, dtype) if model else None
    if traces is not None:
        w = load_traces(traces, max_tokens)
    else:
        w = load_recording(
            routing, shape.num_experts if shape else None, shape.top_k if shape else None, max_tokens
        )
    if shape and (shape.num_layers, shape.num_experts, shape.top_k) != (
        w.num_layers,
        w.num_experts,
        w.top_k,
    ):
        raise SimulateError(
            f"--model {model}: {shape.num_layers} MoE layers x {shape.num_experts} experts, top-{shape.top_k}; "
            f"the input has {w.num_layers} x {w.num_experts}, top-{w.top_k}"
        )
    return w, shape


def load_checked_bundle(predictors: Path, w: Workload):
    """(bank, manifest) of the bundle at `predictors`, after checking it was made for the workload's model."""
    from engine.prefetch.bundle import check_fingerprint, load_bundle

    bank, manifest = load_bundle(predictors)
    if w.fingerprint is not None:
        check_fingerprint(predictors, manifest, w.fingerprint, what=f"the input {w.source}")
    return bank, manifest


def default_policies(w: Workload, has_bundle: bool) -> list[str]:
    """Every policy the workload (its stored inputs) and the bundle (when there is one) allow."""
    return [
        p
        for p in POLICIES
        if (p not in NEEDS_INPUTS or w.inputs is not None)
        and (p in ("none", "crosslayer", "oracle") or has_bundle)
    ]
