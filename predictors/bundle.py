"""Predictor bundles: what `train` writes and the engine loads.

A bundle is one directory:

    predictors.safetensors   the PredictorBank state dict: layers.{i}.{0,1,...}.weight/bias (+ BatchNorm
                             running stats for Arch 1) and expert_counts [L, E] (training-split routing counts)
    manifest.json            format, version, fingerprint, model_type, layer_ids, num_moe_layers, d_model,
                             num_experts, top_k, arch, hidden, loss, loss_consts, training config, data summary,
                             per-layer held-out metrics

Loading checks the fingerprint against the served model's when one is given and raises
`engine.api.errors.BundleMismatch` naming both fingerprints and the bundle path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.api.errors import BundleMismatch
from predictors.model import PredictorBank
from predictors.traces import write_json_atomic

FORMAT = "moe-prefetch-predictors"
VERSION = 1
WEIGHTS = "predictors.safetensors"
MANIFEST = "manifest.json"


def bundle_manifest(traces_manifest: dict, report: dict) -> dict:
    """The manifest of a bundle trained on a trace set (its manifest) with `train_bank`'s report."""
    cfg = report["config"]
    return {
        "fingerprint": traces_manifest["fingerprint"],
        "model_type": traces_manifest["model_type"],
        "layer_ids": traces_manifest["layer_ids"],
        "top_k": traces_manifest["top_k"],
        "arch": cfg["arch"],
        "hidden": cfg["hidden"],
        "loss": cfg["loss"],
        "loss_consts": cfg["loss_consts"],
        "training": {k: v for k, v in cfg.items() if k not in ("arch", "hidden", "loss", "loss_consts")},
        "data": report["data"],
        "heldout_mean": report["heldout_mean"],
        "layers": report["layers"],
    }


def save_bundle(directory: str | Path, bank: PredictorBank, manifest: dict) -> Path:
    """Write the bank's weights and the manifest (shape fields taken from the bank) under `directory`."""
    if "fingerprint" not in manifest:
        raise ValueError("a bundle manifest needs the model fingerprint")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bank.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    full = {
        "format": FORMAT,
        "version": VERSION,
        **manifest,
        "arch": bank.arch,
        "hidden": bank.hidden,
        "d_model": bank.d_model,
        "num_experts": bank.num_experts,
        "num_moe_layers": len(bank),
    }
    write_json_atomic(out / MANIFEST, full)
    return out


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
