"""The simulator's predictions: what each prefetch policy hands the cache at every layer's tap, computed once
over the whole workload (`policy_runs`), and the bundle's per-expert scores for the `predicted` eviction
order (`predictor_scores`).

Prefetch policies are the engine's (`engine.prefetch.policies.build_policy`, `union_best_first`): `exact`,
`overprovision`, `top1`, `adaptive` run the bundle's predictors on the trace's stored pre-attention inputs
(a recording has none); `crosslayer` runs layer l+1's stored router on layer l's input; `oracle`
prefetches the step's own routed set (the engine's replay of an identical run). A bundle trained
`--distance d` predicts layer l + d at layer l's tap, as does the oracle with `oracle_ahead` (the engine's
MOE_ORACLE_AHEAD). Imports numpy, torch, `engine` and `predictors.simulate` (the workload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.api.config import EngineConfig
from engine.api.policies import PREDICTOR_POLICIES
from engine.prefetch.bundle import distance
from engine.prefetch.policies import build_policy, union_best_first
from predictors.simulate import NEEDS_INPUTS, SimulateError, Workload


@dataclass
class PolicyRun:
    """A policy's predictions: `tables[l]` = the id table computed at layer l's tap ([N, M(+1)], numpy),
    for layer l + `shift`; oracle and none have no tables."""

    name: str
    label: str
    shift: int = 0
    counted: bool = False
    tables: list[np.ndarray] | None = None
    params: dict = field(default_factory=dict)

    def ids(self, w: Workload, s: int, layer: int) -> list[int]:
        """The ids the tap at `layer` hands to `cache.prefetch` at step s (best first)."""
        if self.name == "oracle":
            return w.step_routed(s, layer + self.shift)
        table = self.tables[layer]
        if w.rows is None:
            row = table[s].tolist()
            return row[: row[-1]] if self.counted else row
        a, b = w.rows[s]
        return union_best_first(table[a:b].tolist(), self.counted)


def policy_runs(
    w: Workload,
    names: list[str],
    bank=None,
    manifest: dict | None = None,
    *,
    overprovision: int | None = None,
    adaptive_target: float = EngineConfig.adaptive_target,
    adaptive_max: int | None = None,
    oracle_ahead: int = 0,
    batch: int = 8192,
) -> list[PolicyRun]:
    """Each policy's predictions over the whole workload, one pass over the layers' stored inputs. A
    bundle trained `--distance d` predicts layer l + d at layer l's tap (as in the engine), and
    `oracle_ahead` issues the oracle's routing that many layers early (MOE_ORACLE_AHEAD)."""
    for name in names:
        if name in NEEDS_INPUTS and w.inputs is None:
            raise SimulateError(
                f"policy {name} needs the pre-attention inputs, and {w.source} is a routing recording (it "
                "stores only the routed experts): collect a trace set with `moe-prefetch collect` to simulate "
                "it; a recording replays none and oracle"
            )
        if name in PREDICTOR_POLICIES and bank is None:
            raise SimulateError(f"policy {name} runs the predictors: pass --predictors BUNDLE")
    k, e = w.top_k, w.num_experts
    loss = (manifest or {}).get("loss", "wbce")
    ahead = distance(manifest)
    if bank is not None and len(bank) + ahead != w.num_layers:
        raise SimulateError(
            f"the predictor bundle has {len(bank)} layers predicting {ahead} ahead, the trace has "
            f"{w.num_layers} MoE layers"
        )
    if not 0 <= oracle_ahead < w.num_layers:
        raise SimulateError(f"oracle ahead {oracle_ahead}: the trace has {w.num_layers} MoE layers")
    shifts = {"crosslayer": 1, "oracle": oracle_ahead, **{p: ahead for p in PREDICTOR_POLICIES}}
    runs, policies = [], {}
    for name in names:
        run = PolicyRun(name, name, shift=shifts.get(name, 0))
        if name in NEEDS_INPUTS:
            pol = build_policy(
                name,
                k,
                e,
                overprovision=overprovision,
                adaptive_target=adaptive_target,
                adaptive_max=adaptive_max,
                loss=loss,
            )
            policies[name] = pol
            run.counted, run.tables = pol.counted, []
            if name == "overprovision":
                run.label, run.params = f"overprovision({pol.width})", {"k_prime": pol.width}
            elif name == "adaptive":
                run.label = f"adaptive({pol.target:g},{pol.width})"
                run.params = {"target": pol.target, "max": pol.width}
        runs.append(run)
    if policies:
        routers = w.routers() if "crosslayer" in policies else {}
        with torch.no_grad():
            for layer in range(w.num_layers):
                x = w.inputs(layer)  # [N, d]
                for run in runs:
                    if run.tables is None:
                        continue
                    if layer + run.shift >= w.num_layers:  # the last taps predict past the model: none
                        run.tables.append(np.zeros((x.shape[0], 0), dtype=np.int32))
                        continue
                    parts = []
                    for a in range(0, x.shape[0], batch):
                        xb = x[a : a + batch]
                        if run.name == "crosslayer":
                            wt = routers[f"router.{layer + 1}"]  # [E, d]
                            scores = torch.nn.functional.linear(
                                xb.to(wt.dtype), wt, routers.get(f"router_bias.{layer + 1}")
                            )
                        else:
                            scores = bank.forward_layer(layer, xb)  # [b, E]
                        parts.append(policies[run.name].select(scores).to(torch.int32))
                    run.tables.append(torch.cat(parts).numpy())
                del x
    return runs


def predictor_scores(w: Workload, bank, manifest: dict | None = None, batch: int = 8192) -> list[np.ndarray]:
    """The bundle's probability per expert at every layer's tap ([N, E] float32 per layer, N x L x E x 4
    bytes): sigmoid of the logits, or for the MSE loss the clipped outputs (as `adaptive` reads them)."""
    if w.inputs is None or bank is None:
        raise SimulateError(
            "eviction predicted ranks residents by the predictor's scores on the stored pre-attention inputs: "
            "pass --predictors BUNDLE and a trace set from `moe-prefetch collect` (the predictor then runs "
            "under every policy, none included)"
        )
    if distance(manifest):
        raise SimulateError(
            "eviction predicted ranks a layer's residents by that layer's predictor: the bundle predicts "
            f"{distance(manifest)} MoE layers ahead; pass a bundle trained without --distance"
        )
    mse, out = (manifest or {}).get("loss") == "mse", []
    with torch.no_grad():
        for layer in range(w.num_layers):
            x = w.inputs(layer)  # [N, d]
            logits = [bank.forward_layer(layer, x[a : a + batch]).float() for a in range(0, len(x), batch)]
            out.append(torch.cat([v.clamp_min(0) if mse else torch.sigmoid(v) for v in logits]).numpy())
    return out
