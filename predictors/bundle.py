"""Writing predictor bundles: the manifest of a trained bank and the bundle directory `train` writes.

The format (and reading a bundle back) is the engine's: `engine.prefetch.bundle`.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from engine.prefetch.bundle import FORMAT, MANIFEST, VERSION, WEIGHTS
from engine.prefetch.nets import PredictorBank
from predictors.traces import write_json_atomic


def bundle_manifest(
    traces_manifest: dict, report: dict, distance: int = 0, layer_ids: list[int] | None = None
) -> dict:
    """The manifest of a bundle trained on a trace set (its manifest) with `train_bank`'s report; a lookahead
    bundle (`distance` > 0, trained on `predictors.lookahead.LookaheadTraces`) also records its distance and
    the `layer_ids` of the layers it names experts for."""
    cfg = report["config"]
    manifest = {
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
    if distance:
        manifest |= {"distance": distance, "layer_ids": list(layer_ids)}
    return manifest


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
