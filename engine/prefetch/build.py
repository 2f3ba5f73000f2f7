"""Building the prefetcher `MOE_POLICY` asks for: its scorer (a predictor bank, or the next layer's router),
its policy, the bundle it loads and checks against the model, and its installation on the model.

Imports `engine.prefetch.prefetcher`, `engine.prefetch.policies`, `engine.prefetch.routing_trace`,
`engine.prefetch.bundle`, `engine.prefetch.kernel_bank`, `engine.model.fingerprint` and `engine.api`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.api.errors import EngineError
from engine.api.policies import PREDICTOR_POLICIES
from engine.prefetch.bundle import distance
from engine.prefetch.kernel_bank import KernelBank, kernel_bank
from engine.prefetch.policies import ahead_limit, build_policy
from engine.prefetch.prefetcher import Prefetcher, Scorer
from engine.prefetch.routing_trace import RoutingReplay

log = logging.getLogger(__name__)


def _router_scorer(layers: list) -> Scorer:
    """Layer l+1's router logits on layer l's pre-attention input (FATE-style cross-layer guess)."""

    def score(index: int, x: torch.Tensor) -> torch.Tensor:
        router = layers[index + 1].router
        w = router.weight  # [E, d]
        b = getattr(router, "bias", None)
        return F.linear(x.to(w.dtype), w, b if isinstance(b, torch.Tensor) else None)  # [T, E]

    return score


def _bank_scorer(bank) -> Scorer:
    def score(index: int, x: torch.Tensor) -> torch.Tensor:
        return bank.forward_layer(index, x)

    return score


def resolve_bundle(policy: str, predictors: str | None, builtin_bundle: Path | None) -> str | None:
    if policy not in PREDICTOR_POLICIES:
        return None
    if predictors is not None:
        return predictors
    if builtin_bundle is not None:
        return str(builtin_bundle)
    raise EngineError(
        f"MOE_POLICY={policy} needs a predictor bundle: set MOE_PREDICTORS to a directory written by "
        "`moe-prefetch train` for this model (or use MOE_POLICY=none, crosslayer or oracle)"
    )


def load_predictors(path: str, model, layers: list, device: torch.device, dtype: torch.dtype):
    """The bundle at `path` as a bank on `device`, after checking it belongs to `model`."""
    from engine.model.fingerprint import model_fingerprint
    from engine.prefetch.bundle import load_bundle

    try:
        bank, manifest = load_bundle(path, expected_fingerprint=model_fingerprint(model))
    except (FileNotFoundError, ValueError) as err:
        raise EngineError(f"MOE_PREDICTORS: {err}") from None
    check_depth(f"predictor bundle {path}", len(bank), distance(manifest), len(layers))
    return bank.to(device=device, dtype=dtype).eval(), manifest


def check_depth(what: str, predictors: int, ahead: int, moe_layers: int) -> None:
    """A bank predicting `ahead` MoE layers ahead has one predictor per MoE layer but the last `ahead`."""
    if predictors + ahead != moe_layers:
        raise EngineError(
            f"{what} has {predictors} layers"
            + (f" predicting {ahead} ahead" if ahead else "")
            + f", the model has {moe_layers} MoE layers"
        )


def build_prefetcher(
    om,
    config,
    builtin_bundle: Path | None = None,
    on_latency: Callable[[float], None] | None = None,
    bank=None,
    manifest: dict | None = None,
    threaded: bool | None = None,
    graphs_enabled: bool = True,
) -> Prefetcher | None:
    """The prefetcher `config.policy` asks for on the offloaded model `om` (None for `none`), installed.

    `bank`/`manifest` may be passed directly (tests, benchmarks); otherwise the bundle comes from
    `config.predictors` or the built-in model's shipped bundle.
    """
    name = config.policy
    if name == "none":
        return None
    layers, cache = om.layers, om.cache
    num_experts = om.store.layout.num_experts
    if name == "oracle":
        if not config.oracle_trace:
            raise EngineError(
                "MOE_POLICY=oracle needs MOE_ORACLE_TRACE: a routing file recorded with MOE_RECORD_ROUTING"
            )
        from engine.model.fingerprint import model_fingerprint

        replay = RoutingReplay.load(config.oracle_trace, model_fingerprint(om.model), len(layers))
        ahead = config.oracle_ahead
        if ahead >= len(layers):
            raise EngineError(f"MOE_ORACLE_AHEAD={ahead}: the model has {len(layers)} MoE layers")
        return Prefetcher(
            layers,
            cache,
            None,
            shift=ahead,
            replay=replay,
            limit=ahead_limit(cache.capacity, om.top_k, ahead),
            on_latency=on_latency,
            threaded=False,
        ).install()
    if name == "crosslayer":
        policy = build_policy(name, om.top_k, num_experts)
        pf = Prefetcher(
            layers,
            cache,
            policy,
            _router_scorer(layers),
            shift=1,
            limit=ahead_limit(cache.capacity, om.top_k, 1),
            on_latency=on_latency,
            threaded=threaded,
        )
    else:
        if bank is None:
            path = resolve_bundle(name, config.predictors, builtin_bundle)
            bank, manifest = load_predictors(path, om.model, layers, om.device, om.dtype)  # checked there
        else:
            check_depth("the predictor bank", len(bank), distance(manifest), len(layers))
        policy = build_policy(
            name,
            om.top_k,
            num_experts,
            overprovision=config.overprovision,
            adaptive_target=config.adaptive_target,
            adaptive_max=config.adaptive_max,
            loss=(manifest or {}).get("loss", "wbce"),
        )
        ahead = distance(manifest)
        bank = kernel_bank(bank, om.device, config.predictor_kernel and config.fused_kernels)
        pf = Prefetcher(
            layers,
            cache,
            policy,
            _bank_scorer(bank),
            shift=ahead,
            ranker=getattr(bank, "top_ids", None),
            limit=ahead_limit(cache.capacity, om.top_k, ahead),
            on_latency=on_latency,
            threaded=threaded,
        )
    pf.install()
    graphs = pf.capture_decode_graphs(int(om.model.config.hidden_size), om.dtype) if graphs_enabled else 0
    log.info(
        "prefetch policy %s: up to %d experts per token; %s%s%s",
        name,
        policy.width,
        "side stream + worker thread" if pf.threaded else "inline",
        f", {graphs} single-token taps as CUDA graphs" if graphs else "",
        ", decode-step predictors as one Triton kernel per layer" if isinstance(bank, KernelBank) else "",
    )
    return pf
