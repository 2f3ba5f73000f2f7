"""Predictor bundles for tests: right shape and fingerprint, random (untrained) weights.

Predictions from an untrained bank are poor, which is what the engine tests want: outputs must not
depend on them, and every counter path (issued, used, wasted) gets exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model.builtin import load_builtin
from engine.model.fingerprint import model_fingerprint
from engine.model.loader import CacheBudget
from engine.prefetch.nets import PredictorBank
from predictors.bundle import save_bundle


def builtin_bundle(directory: Path, seed: int = 0, fingerprint: str | None = None) -> Path:
    """A bundle for the built-in model (or, with `fingerprint`, one that claims another model)."""
    om = load_builtin(torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0))
    torch.manual_seed(seed)
    bank = PredictorBank(
        2, om.model.config.hidden_size, om.store.layout.num_experts, len(om.layers), hidden=32
    )
    manifest = {
        "fingerprint": fingerprint or model_fingerprint(om.model),
        "model_type": om.model.config.model_type,
        "layer_ids": [lay.layer_id for lay in om.layers],
        "top_k": om.top_k,
        "loss": "wbce",
    }
    return save_bundle(directory, bank, manifest)
