"""Loading a model with its routed experts offloaded: from a checkpoint, or synthetic.

`load_checkpoint(dir, ...)` reads a local Hugging Face checkpoint (config.json, safetensors shards,
tokenizer) of any MoE family whose transformers implementation uses the v5 `Experts` modules.
transformers does the loading (so each family's weight conversions apply) on the CPU; then, layer by
layer, each experts module's weights are copied into the pinned `ExpertStore` and dropped, so no
expert is held twice, and the remaining (non-expert) modules move to the device. Every shard is
checked first, and a missing, corrupt or mismatched tensor fails with a `ModelLoadError` naming the
file and the tensor.

`build_synthetic(config, ...)` builds a random-weight model of any config's shape straight into the
same split: non-expert weights are created on the device, experts are generated on the device in
chunks and copied to pinned host memory. Nothing goes to disk and nothing is filled on the CPU.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.api.errors import ModelLoadError
from engine.api.policies import DEFAULT_LFU_HALF_LIFE
from engine.api.stats import CacheCounters
from engine.experts.cache import ExpertCache
from engine.experts.eviction import build_eviction
from engine.experts.slots import slots_for_budget
from engine.experts.store import ExpertLayout, ExpertStore
from engine.model.model_map import (
    MoELayer,
    expert_param_names,
    find_moe_layers,
    fix_latent_attention_groups,
    is_experts_module,
    top_k_of,
)
from engine.model.offload import install_offload, strip_expert_weights

log = logging.getLogger(__name__)

DEVICE_RESERVE_BYTES = (
    2 * 1024**3
)  # left free on the GPU for activations and the KV cache when sizing automatically


@dataclass
class CacheBudget:
    fraction: float | None = None
    gigabytes: float | None = None
    eviction: str = "lru"  # MOE_EVICTION
    lfu_half_life: float = DEFAULT_LFU_HALF_LIFE  # tokens, for lfu


@dataclass
class OffloadedModel:
    model: nn.Module
    tokenizer: object | None
    layers: list[MoELayer]
    store: ExpertStore
    cache: ExpertCache
    device: torch.device
    dtype: torch.dtype
    top_k: int
    source: str  # checkpoint path or "synthetic:<name>"

    @property
    def counters(self) -> CacheCounters:
        return self.cache.counters


# ----------------------------------------------------------------------------- checks
def _shard_files(path: Path) -> dict[str, Path]:
    """tensor name -> shard file, from the index or the single file; raises on missing/corrupt files."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({err})") from None
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
        weight_map = None
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights found")
    where: dict[str, Path] = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise ModelLoadError(f"{f}: listed in the index but missing")
        try:
            with safe_open(str(f), "pt") as st:
                for key in st.keys():
                    where[key] = f
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(f"{f}: corrupt or unreadable safetensors file ({err})") from None
    if weight_map is not None:
        for key, name in weight_map.items():
            if where.get(key) != path / name:
                raise ModelLoadError(f"{path / name}: tensor {key} is in the index but not in the file")
    return where


def _files_for(prefix: str, where: dict[str, Path]) -> str:
    hits = sorted({str(f) for k, f in where.items() if k.startswith(prefix)})
    return ", ".join(hits) if hits else "no file"


def _check_loading_info(path: Path, info: dict, where: dict[str, Path]) -> None:
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        name = first[0] if isinstance(first, tuple) else str(first)
        shapes = (
            f" (checkpoint {tuple(first[1])}, config expects {tuple(first[2])})"
            if isinstance(first, tuple) and len(first) >= 3
            else ""
        )
        prefix = name.rsplit(".", 1)[0]
        raise ModelLoadError(
            f"{_files_for(prefix, where)}: tensor {name} has the wrong shape for the config{shapes}"
        )
    missing = sorted(k for k in info.get("missing_keys") or [] if "rotary_emb" not in k)
    if missing:
        raise ModelLoadError(
            f"{path}: tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise ModelLoadError(
            f"{where.get(unexpected[0], path)}: tensor {unexpected[0]} does not belong to this config "
            f"({len(unexpected)} unexpected)"
        )


# ----------------------------------------------------------------------------- the split
def _layout_of(experts: nn.Module, dtype: torch.dtype) -> ExpertLayout:
    shapes = {name: tuple(getattr(experts, name).shape[1:]) for name in expert_param_names(experts)}
    return ExpertLayout.from_shapes(shapes, dtype, int(experts.num_experts))


def _move_non_experts(model: nn.Module, device: torch.device) -> None:
    expert_ids = {id(p) for m in model.modules() if is_experts_module(m) for p in m.parameters(recurse=False)}

    def move(t: torch.Tensor) -> torch.Tensor:
        if id(t) in expert_ids or t.is_meta:
            return t
        return t.to(device)

    model._apply(move)


def _check_no_meta(model: nn.Module, what: str) -> None:
    experts = {id(p) for m in model.modules() if is_experts_module(m) for p in m.parameters(recurse=False)}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta and id(t) not in experts:
            raise ModelLoadError(f"{what}: {name} was never given real weights (left on the meta device)")


def _make_cache(
    layers: list[MoELayer], store: ExpertStore, device: torch.device, budget: CacheBudget, top_k: int
) -> ExpertCache:
    free = None
    if budget.fraction is None and budget.gigabytes is None and device.type == "cuda":
        free_b, _ = torch.cuda.mem_get_info(device)
        free = max(0, free_b - DEVICE_RESERVE_BYTES)
    slots = slots_for_budget(
        store.total_experts,
        store.layout.nbytes,
        min_slots=top_k,
        fraction=budget.fraction,
        gigabytes=budget.gigabytes,
        free_bytes=free,
    )
    counters = CacheCounters(len(layers), layer_ids=[lay.layer_id for lay in layers])
    order = build_eviction(budget.eviction, len(layers), budget.lfu_half_life)
    cache = ExpertCache(store, slots, device, counters, eviction=order)
    log.info(
        "expert cache: %d of %d experts (%.1f%%), %.2f GB on %s, %s eviction; store %.2f GB %s",
        slots,
        store.total_experts,
        100 * slots / store.total_experts,
        slots * store.layout.nbytes / 1e9,
        device,
        budget.eviction,
        store.nbytes / 1e9,
        "pinned" if store.pinned else "pageable",
    )
    return cache


def offload(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    budget: CacheBudget,
    source: str,
    tokenizer: object | None = None,
) -> OffloadedModel:
    """Split an already-built model (experts on CPU) into device weights + pinned store + cache."""
    layers = find_moe_layers(model)
    if fix_latent_attention_groups(model):
        log.info("%s: latent attention keys have one head per query head (num_key_value_groups = 1)", source)
    layout = _layout_of(layers[0].experts, dtype)
    store = ExpertStore(layout, len(layers), pin=device.type == "cuda")
    for layer in layers:
        if _layout_of(layer.experts, dtype) != layout:
            raise ModelLoadError(
                f"{source}: MoE layer {layer.layer_id} has experts of another shape than layer 0"
            )
        store.fill_from_module(layer.index, layer.experts)
        strip_expert_weights(layer.experts)  # the host copy goes as soon as the store has it
    _move_non_experts(model, device)
    top_k = top_k_of(model)
    cache = _make_cache(layers, store, device, budget, top_k)
    install_offload(model, cache, layers)
    model.eval()
    return OffloadedModel(model, tokenizer, layers, store, cache, device, dtype, top_k, source)


def replace_cache(om: OffloadedModel, budget: CacheBudget) -> ExpertCache:
    """Give the model a new, empty cache of another size (benchmarks compare sizes on one model)."""
    old, om.cache = om.cache, None
    old.pool, old.weights = None, {}  # free the old pool (and its views) before allocating the new one
    del old
    if om.device.type == "cuda":
        torch.cuda.synchronize(om.device)
        torch.cuda.empty_cache()
    om.cache = _make_cache(om.layers, om.store, om.device, budget, om.top_k)
    install_offload(om.model, om.cache, om.layers)
    return om.cache


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(str(path))


def load_checkpoint(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    budget: CacheBudget,
    tokenizer: object | None = None,
) -> OffloadedModel:
    """`tokenizer` overrides the one read from the folder (the built-in model brings its own)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as err:
        raise ModelLoadError(f"{path / 'config.json'}: cannot read the config ({err})") from None
    where = _shard_files(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"{path}: transformers could not load the checkpoint: {err}") from None
    _check_loading_info(path, info, where)
    _check_no_meta(model, str(path))
    tok = tokenizer if tokenizer is not None else load_tokenizer(path)
    return offload(model, device, dtype, budget, str(path), tokenizer=tok)


# ----------------------------------------------------------------------------- synthetic
@torch.no_grad()
def build_synthetic(
    config,
    device: torch.device,
    dtype: torch.dtype,
    budget: CacheBudget,
    seed: int = 0,
    std: float | None = None,
    name: str = "synthetic",
    chunk_experts: int = 16,
    embed_std: float | None = None,
) -> OffloadedModel:
    """A random-weight model of `config`'s shape, built straight into the device / pinned-host split.

    `embed_std` redraws the token embeddings with that standard deviation. With the default init
    (0.02 everywhere) the residual stream of a deep random model soon forgets the token: every MoE
    layer after the first routes all tokens to a dozen experts (measured on Qwen3-30B-A3B's shape: 12
    distinct experts of 128 per layer over 20 decode steps), which no trained model does and which
    any cache would hold. With `embed_std=1.0` the same shape routes to ~75 of 128 (uniform: ~92).
    """
    from transformers import AutoModelForCausalLM

    std = std if std is not None else float(getattr(config, "initializer_range", 0.02))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layers = find_moe_layers(model)
    if fix_latent_attention_groups(model):
        log.info("%s: latent attention keys have one head per query head (num_key_value_groups = 1)", name)
    layout = _layout_of(layers[0].experts, dtype)
    store = ExpertStore(layout, len(layers), pin=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(seed)

    experts_modules = {id(lay.experts) for lay in layers}
    expert_params = {id(p) for lay in layers for p in lay.experts.parameters(recurse=False)}
    model._apply(lambda t: t if id(t) in expert_params else torch.empty_like(t, device=device))
    for module in model.modules():
        if id(module) not in experts_modules:
            model._init_weights(module)
    for pname, p in model.named_parameters():  # re-draw with our generator, so a seed fixes the model
        if id(p) in expert_params:
            continue
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=gen)
        elif pname.endswith("bias"):
            p.zero_()
    if embed_std is not None:
        model.get_input_embeddings().weight.normal_(0.0, embed_std, generator=gen)

    for layer in layers:  # experts: generated on the device in chunks, copied to pinned host rows
        buf = store.allocate(layer.index)  # [E, numel]
        for e0 in range(0, layout.num_experts, chunk_experts):
            e1 = min(layout.num_experts, e0 + chunk_experts)
            tmp = torch.empty((e1 - e0, layout.numel), dtype=dtype, device=device)
            for spec in layout.params:
                view = tmp[:, spec.offset : spec.offset + spec.numel]
                if spec.name.endswith("bias"):
                    view.zero_()
                else:
                    view.normal_(0.0, std, generator=gen)
            buf[e0:e1].copy_(tmp, non_blocking=False)
        strip_expert_weights(layer.experts)
    _check_no_meta(model, name)
    top_k = top_k_of(model)
    cache = _make_cache(layers, store, device, budget, top_k)
    install_offload(model, cache, layers)
    model.eval()
    return OffloadedModel(model, None, layers, store, cache, device, dtype, top_k, f"synthetic:{name}")
