"""Predictor bundles, the reading side: the format, reading and checking a manifest, loading the bank.

A bundle is one directory (written by `moe-prefetch train`):

    predictors.safetensors   the PredictorBank state dict: layers.{i}.{0,1,...}.weight/bias (+ BatchNorm
                             running stats for Arch 1) and expert_counts [L, E] (training-split routing counts)
    manifest.json            format, version, fingerprint, model_type, layer_ids, num_moe_layers, d_model,
                             num_experts, top_k, arch, hidden, loss, loss_consts, training config, data summary,
                             per-layer held-out metrics, and `distance` (predictor i names MoE layer i + distance's
                             experts from layer i's input; absent = 0: the bank has one predictor per MoE layer,
                             else num_moe_layers - distance of them, and layer_ids are the target layers)

Loading checks the fingerprint against the served model's when one is given and raises
`engine.api.errors.BundleMismatch` naming both fingerprints and the bundle path.

Imports `engine.prefetch.nets` and `engine.api`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.api.errors import BundleMismatch
from engine.prefetch.nets import PredictorBank

FORMAT = "moe-prefetch-predictors"
VERSION = 1
WEIGHTS = "predictors.safetensors"
MANIFEST = "manifest.json"


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} is not a predictor bundle: no {MANIFEST} (run `moe-prefetch train`)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a moe-prefetch predictor manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{path}: bundle format version {manifest.get('version')}, this code reads {VERSION}"
        )
    return manifest


def check_fingerprint(
    directory: str | Path, manifest: dict, expected: str, what: str = "the served model"
) -> None:
    found = manifest.get("fingerprint")
    if found != expected:
        raise BundleMismatch(
            f"predictor bundle {directory} was trained for another model: bundle fingerprint {found}, "
            f"{what} has fingerprint {expected}. Collect traces and train predictors for this model "
            f"(moe-prefetch collect, then moe-prefetch train)."
        )


def load_bundle(
    directory: str | Path, *, expected_fingerprint: str | None = None, device: str | torch.device = "cpu"
) -> tuple[PredictorBank, dict]:
    """(bank in eval mode on `device`, manifest); BundleMismatch if `expected_fingerprint` differs."""
    manifest = read_manifest(directory)
    if expected_fingerprint is not None:
        check_fingerprint(directory, manifest, expected_fingerprint)
    bank = PredictorBank(
        int(manifest["arch"]),
        int(manifest["d_model"]),
        int(manifest["num_experts"]),
        int(manifest["num_moe_layers"]),
        int(manifest["hidden"]),
    )
    bank.load_state_dict(load_file(str(Path(directory) / WEIGHTS)))
    return bank.to(device).eval(), manifest


def distance(manifest: dict | None) -> int:
    """How many MoE layers ahead a bundle's predictors name experts (`moe-prefetch train --distance`):
    predictor i reads MoE layer i's input and names layer i + distance's experts. 0 for older bundles."""
    return int((manifest or {}).get("distance", 0))
