"""A trace set seen `distance` MoE layers ahead (issue #17, item 2: lookahead predictors).

`LookaheadTraces(traces, d)` pairs MoE layer i's pre-attention input with MoE layer i+d's routing (its
router scores and true top-k), for i = 0 .. L-1-d, so `predictors.train.train_bank` trains, unchanged, a
predictor per layer that names the experts d layers later: a prefetch issued from layer i's input has d
layers of compute to hide behind instead of one attention. d = 0 is the trace set itself.

It reads what `TraceSet` reads, two layers per `layer(i)`; `summary()` records the distance. Imports
`predictors.traces` only.
"""

from __future__ import annotations

import torch

from predictors.traces import LayerData, TraceSet


class LookaheadTraces:
    def __init__(self, traces: TraceSet, distance: int) -> None:
        if not 0 <= distance < traces.num_layers:
            raise ValueError(
                f"lookahead distance {distance}: the trace set has {traces.num_layers} MoE layers "
                f"(distances 0..{traces.num_layers - 1})"
            )
        self.traces, self.distance = traces, distance

    fingerprint = property(lambda self: self.traces.fingerprint)
    num_layers = property(
        lambda self: self.traces.num_layers - self.distance
    )  # predictors: one per source layer
    num_experts = property(lambda self: self.traces.num_experts)
    top_k = property(lambda self: self.traces.top_k)
    d_model = property(lambda self: self.traces.d_model)
    samples = property(lambda self: self.traces.samples)

    @property
    def layer_ids(self) -> list[int]:
        """The decoder layer each predictor's targets belong to (layer i + distance's)."""
        return self.traces.layer_ids[self.distance :]

    def prompt_ids(self) -> torch.Tensor:
        return self.traces.prompt_ids()

    def split(self, holdout_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.traces.split(holdout_frac, seed)  # the same prompts held out at every distance

    def layer(self, i: int, mask: torch.Tensor | None = None) -> LayerData:
        """Layer i's inputs, layer i + distance's scores and top-k."""
        if not 0 <= i < self.num_layers:
            raise IndexError(f"source layer {i} out of range: {self.num_layers} at distance {self.distance}")
        src = self.traces.layer(i, mask)
        if self.distance == 0:
            return src
        dst = self.traces.layer(i + self.distance, mask)
        return LayerData(x=src.x, scores=dst.scores, topk=dst.topk)

    def routers(self) -> dict[str, torch.Tensor]:
        return self.traces.routers()

    def summary(self) -> dict[str, object]:
        return {**self.traces.summary(), "lookahead_distance": self.distance}
