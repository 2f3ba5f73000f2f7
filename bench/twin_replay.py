"""The replay artefact (`bench/train_twin.py`, phase 5): a twin's routing and its predictors' outputs on a
fixed benchmark text, small enough to commit, so a real-shape random-weight model can replay them.

Written as `<dir>/<shape>.npz` (numpy, compressed) + `<dir>/<shape>.json` (the manifest). Shape legend:
L = MoE layers, N = tokens of all prompts together, k = routed experts per token, k' = predicted per token,
P = prompts.

    tokens           [N]     int16    the prompts' token ids (built-in tokenizer), prompt after prompt
    offsets          [P+1]   int32    prompt p is tokens[offsets[p]:offsets[p+1]]
    routed_ids       [L,N,k] uint8    the twin's router selection at each MoE layer, best weight first
    routed_weights   [L,N,k] float16  the weights the twin's experts were given (its routing function's)
    predicted_ids    [L,N,k'] uint8   the predictor bank's top-k' experts from the same token's
                                      pre-attention input (input_layernorm output), best first
    predicted_ids_ahead_<d>  [L-d,N,k'] uint8   (optional, one per lookahead distance d in the manifest's
                                      `ahead`) row i: a lookahead bank's top-k' experts of MoE layer i + d
                                      from layer i's pre-attention input (`moe-prefetch train --distance d`)
    layer_ids        [L]     int16    the decoder layer of each MoE layer

Each prompt is run alone (batch 1, no padding) through the twin in eval mode (float32, its experts the
training's grouped GEMMs: bf16 on CUDA, `bench/train_twin.py` phase 2), the whole prompt in
one forward (the predictors read the same pre-attention states a token-by-token decode would: causal
attention). The manifest carries the shape, k, k', the tokenizer's SHA-256, the twin's fingerprint, the
predictor pairing, every prompt's source and text, and what each array is. Prompts are added in order while
the artefact's estimated size stays under `max_bytes`.
Imports numpy, torch and engine.model.model_map (the MoE layers) only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from engine.model.model_map import find_moe_layers

FORMAT = "moe-prefetch-twin-replay"
VERSION = 1
ARRAYS = {
    "tokens": "[N] int16: token ids of every prompt, prompt after prompt (built-in tokenizer)",
    "offsets": "[P+1] int32: prompt p is tokens[offsets[p]:offsets[p+1]]",
    "routed_ids": "[L, N, k] uint8: the twin router's selected experts per MoE layer and token, best weight first",
    "routed_weights": "[L, N, k] float16: the routing weights of routed_ids (the twin's routing function)",
    "predicted_ids": "[L, N, k'] uint8: the predictor bank's top-k' experts from the token's pre-attention "
    "input at that layer, best first",
    "layer_ids": "[L] int16: decoder-layer index of each MoE layer",
}
AHEAD_ARRAY = (
    "[L-{d}, N, k'] uint8: row i, a lookahead bank's top-k' experts of MoE layer i + {d} from layer i's "
    "pre-attention input, best first"
)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Hooks:
    """Per forward: each MoE layer's input_layernorm output [T, d] and router (weights, ids) [T, k]."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = find_moe_layers(model)
        n = len(self.layers)
        self.x, self.w, self.ids = [None] * n, [None] * n, [None] * n
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.input_layernorm.register_forward_hook(self._norm(i)))
            self.handles.append(layer.router.register_forward_hook(self._router(i)))

    def _norm(self, i):
        def hook(_m, _inp, out):
            self.x[i] = out.detach().reshape(-1, out.shape[-1])

        return hook

    def _router(self, i):
        def hook(_m, _inp, out):
            self.w[i] = out[1].detach().reshape(-1, out[1].shape[-1]).float()
            self.ids[i] = out[2].detach().reshape(-1, out[2].shape[-1])

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def ahead_key(d: int) -> str:
    """The array of the lookahead bank of distance d."""
    return f"predicted_ids_ahead_{d}"


def bytes_per_token(num_layers: int, k: int, k_prime: int, ahead: tuple[int, ...] = ()) -> int:
    """token + ids (uint8) + weights (fp16) + predictions, and each lookahead distance's predictions"""
    return 2 + num_layers * (k + 2 * k + k_prime) + sum(num_layers - d for d in ahead) * k_prime


def _top(bank, x: list, k_prime: int, layers: range) -> np.ndarray:
    """[len(layers), T, k'] uint8: the bank's predictor i's top-k' experts from input x[i], i in layers."""
    scores = [bank.forward_layer(j, x[i]) for j, i in enumerate(layers)]
    return torch.stack([s.topk(k_prime, dim=-1).indices for s in scores]).cpu().numpy().astype(np.uint8)


@torch.inference_mode()
def record(
    model, bank, prompts: list[dict], k_prime: int, max_tokens: int, max_bytes: int, ahead: dict | None = None
) -> dict:
    """Arrays of the artefact for `prompts` ([{source, text, ids}]); prompts past `max_bytes` are dropped.
    `ahead`: {d: a lookahead bank of distance d (predictor i names MoE layer i + d's experts)}."""
    ahead = dict(sorted((ahead or {}).items()))
    hooks = _Hooks(model)
    device = model.get_input_embeddings().weight.device
    nl, k = len(hooks.layers), int(model.config.num_experts_per_tok)
    per_token = bytes_per_token(nl, k, k_prime, tuple(ahead))
    toks, routed, weights, preds, kept, n_tok = [], [], [], [], [], 0
    far: dict[int, list] = {d: [] for d in ahead}
    try:
        for p in prompts:
            ids = p["ids"][:max_tokens]
            if not ids or (n_tok + len(ids)) * per_token > max_bytes:
                continue
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
            w = torch.stack(hooks.w)  # [L, T, k]
            order = w.argsort(dim=-1, descending=True, stable=True)
            routed.append(torch.stack(hooks.ids).gather(-1, order).cpu().numpy().astype(np.uint8))
            weights.append(w.gather(-1, order).cpu().numpy().astype(np.float16))
            preds.append(_top(bank, hooks.x, k_prime, range(nl)))
            for d, b in ahead.items():
                far[d].append(_top(b, hooks.x, k_prime, range(nl - d)))
            toks.append(np.asarray(ids, dtype=np.int16))
            kept.append({"source": p["source"], "text": p["text"], "tokens": len(ids)})
            n_tok += len(ids)
    finally:
        hooks.remove()
    offsets = np.zeros(len(toks) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([t.size for t in toks])
    arrays = {
        "tokens": np.concatenate(toks),
        "offsets": offsets,
        "routed_ids": np.concatenate(routed, axis=1),
        "routed_weights": np.concatenate(weights, axis=1),
        "predicted_ids": np.concatenate(preds, axis=1),
        "layer_ids": np.asarray([layer.layer_id for layer in hooks.layers], dtype=np.int16),
    }
    arrays |= {ahead_key(d): np.concatenate(v, axis=1) for d, v in far.items()}
    return {"arrays": arrays, "prompts": kept, "ahead": list(ahead)}


def write(out_dir: Path, shape: str, rec: dict, meta: dict) -> dict:
    """Write `<shape>.npz` and `<shape>.json`; returns the manifest (with the npz's bytes and SHA-256)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / f"{shape}.npz"
    np.savez_compressed(npz, **rec["arrays"])
    a = rec["arrays"]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "shape": shape,
        **meta,
        "num_moe_layers": int(a["routed_ids"].shape[0]),
        "tokens": int(a["tokens"].size),
        "prompts_count": len(rec["prompts"]),
        "top_k": int(a["routed_ids"].shape[2]),
        "k_prime": int(a["predicted_ids"].shape[2]),
        "ahead": rec.get("ahead", []),
        "arrays": ARRAYS | {ahead_key(d): AHEAD_ARRAY.format(d=d) for d in rec.get("ahead", [])},
        "file": npz.name,
        "bytes": npz.stat().st_size,
        "sha256": sha256_file(npz),
        "prompts": rec["prompts"],
    }
    (out_dir / f"{shape}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def routed_experts(config: dict) -> int:
    """Routed experts per MoE layer of a transformers config dict, whichever key its family uses."""
    for key in ("n_routed_experts", "num_experts", "num_local_experts"):
        if config.get(key):
            return int(config[key])
    raise KeyError(
        "the config names no routed-expert count (n_routed_experts, num_experts, num_local_experts)"
    )


def load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays) of `<shape>.json` (or its .npz), checking format, SHA-256 and array shapes."""
    path = Path(path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a twin replay manifest")
    npz = path.with_suffix(".npz")
    if sha256_file(npz) != manifest["sha256"]:
        raise ValueError(f"{npz}: SHA-256 differs from the manifest's")
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    nl, n, k, kp = manifest["num_moe_layers"], manifest["tokens"], manifest["top_k"], manifest["k_prime"]
    want = {
        "routed_ids": (nl, n, k),
        "routed_weights": (nl, n, k),
        "predicted_ids": (nl, n, kp),
        "tokens": (n,),
    }
    for d in manifest.get("ahead", []):
        if not 0 < d < nl:
            raise ValueError(f"{path}: lookahead distance {d} outside 1..{nl - 1}")
        want[ahead_key(d)] = (nl - d, n, kp)
    for key, shp in want.items():
        if key not in arrays:
            raise ValueError(f"{npz}: no {key} array, which the manifest lists")
        if arrays[key].shape != shp:
            raise ValueError(f"{npz}: {key} has shape {arrays[key].shape}, the manifest says {shp}")
    return manifest, arrays
