"""Routing-trace storage: the shard writer `collect` uses and the `TraceSet` reader `train`/`evaluate` use.

A trace set is one directory:

    manifest.json            fingerprint, model_type, num_moe_layers, layer_ids, num_experts, top_k, d_model,
                             x_dtype, scores_dtype, samples, prompts_done, shards [{file, samples, prompts}]
    routers.safetensors      router.{i} [E, d] float32 (and router_bias.{i} [E]) of every MoE layer i
    shard-00000.safetensors  x.{i} [N, d] bf16|fp16   the output of layer i's input_layernorm
                             scores.{i} [N, E] fp16|float32   softmax(router logits) in float32, stored
                             topk.{i} [N, k] int16|int32      the router's true selection
                             prompt_id [N] int32, position [N] int32   (the same rows for every layer)

i is the position among MoE layers (layer_ids maps it to the decoder layer). Shards end on a prompt
boundary and the manifest is rewritten (atomically) after each one, so `prompts_done` prompts are exactly
on disk: a resumed run skips them and overwrites any shard the manifest does not list.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

FORMAT = "moe-prefetch-traces"
VERSION = 1
MANIFEST = "manifest.json"
ROUTERS = "routers.safetensors"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class TraceWriter:
    """Buffers per-token records and writes a shard whenever `shard_size` samples are buffered."""

    def __init__(
        self,
        out_dir: Path,
        meta: dict,
        *,
        shard_size: int,
        resume: bool,
        x_dtype: str = "bf16",
        scores_dtype: str = "fp16",
    ) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.num_layers = int(meta["num_moe_layers"])
        path = self.dir / MANIFEST
        if resume and path.exists():
            self.manifest = json.loads(path.read_text())
            if self.manifest.get("fingerprint") != meta["fingerprint"]:
                raise ValueError(
                    f"{self.dir} holds traces of another model (fingerprint {self.manifest.get('fingerprint')}, "
                    f"this model {meta['fingerprint']}): use another --out or --no-resume"
                )
            log.info(
                "resuming %s: %d samples, %d prompts done",
                self.dir,
                self.manifest["samples"],
                self.manifest["prompts_done"],
            )
        else:
            for old in self.dir.glob("shard-*.safetensors"):
                old.unlink()
            self.manifest = {
                "format": FORMAT,
                "version": VERSION,
                **meta,
                "x_dtype": x_dtype,
                "scores_dtype": scores_dtype,
                "samples": 0,
                "prompts_done": 0,
                "shards": [],
            }
        self.x_dtype = DTYPES[self.manifest["x_dtype"]]
        self.scores_dtype = DTYPES[self.manifest["scores_dtype"]]
        self._buf: list[dict[str, torch.Tensor]] = []
        self._buffered = 0
        self._first_prompt: int | None = None
        self._last_prompt: int | None = None
        self._pending_prompts_done = self.prompts_done

    @property
    def samples(self) -> int:
        """Samples on disk plus samples buffered."""
        return int(self.manifest["samples"]) + self._buffered

    @property
    def prompts_done(self) -> int:
        return int(self.manifest["prompts_done"])

    def write_routers(self, tensors: dict[str, torch.Tensor]) -> None:
        save_file(
            {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(self.dir / ROUTERS)
        )

    def add_prompt(
        self, prompt_id: int, x: list[torch.Tensor], scores: list[torch.Tensor], topk: list[torch.Tensor]
    ) -> None:
        """One prompt's tokens: x[i] [T, d], scores[i] [T, E], topk[i] [T, k] for every MoE layer i."""
        t = x[0].shape[0]
        topk_dtype = torch.int16 if scores[0].shape[1] <= torch.iinfo(torch.int16).max else torch.int32
        rec = {
            "prompt_id": torch.full((t,), prompt_id, dtype=torch.int32),
            "position": torch.arange(t, dtype=torch.int32),
        }
        for i in range(self.num_layers):
            rec[f"x.{i}"] = x[i].detach().to("cpu", self.x_dtype)  # [T, d]
            rec[f"scores.{i}"] = scores[i].detach().to("cpu", self.scores_dtype)  # [T, E]
            rec[f"topk.{i}"] = topk[i].detach().to("cpu", topk_dtype)  # [T, k]
        self._buf.append(rec)
        self._buffered += t
        if self._first_prompt is None:
            self._first_prompt = prompt_id
        self._last_prompt = prompt_id

    def end_prompt(self, prompts_done: int) -> None:
        """Call after each prompt: flushes a shard once enough samples are buffered."""
        self._pending_prompts_done = prompts_done
        if self._buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            self.manifest["prompts_done"] = self._pending_prompts_done
            write_json_atomic(self.dir / MANIFEST, self.manifest)
            return
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        tensors = {key: torch.cat([r[key] for r in self._buf]).contiguous() for key in self._buf[0]}
        save_file(tensors, str(self.dir / name))
        self.manifest["shards"].append(
            {"file": name, "samples": self._buffered, "prompts": [self._first_prompt, self._last_prompt]}
        )
        self.manifest["samples"] += self._buffered
        self.manifest["prompts_done"] = self._pending_prompts_done
        write_json_atomic(self.dir / MANIFEST, self.manifest)
        log.debug("wrote %s (%d samples)", name, self._buffered)
        self._buf, self._buffered, self._first_prompt = [], 0, None


@dataclass
class LayerData:
    """One MoE layer's samples: x [N, d] (stored dtype), scores [N, E] float32, topk [N, k] int64."""

    x: torch.Tensor
    scores: torch.Tensor
    topk: torch.Tensor


class TraceSet:
    """Reads a trace directory written by `collect`; loads one layer at a time (memory ~ N x d per layer)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.exists():
            raise FileNotFoundError(
                f"{self.dir} is not a trace set: no {MANIFEST} (run `moe-prefetch collect`)"
            )
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: not a moe-prefetch trace manifest")
        if not self.manifest["shards"]:
            raise ValueError(f"{self.dir} holds no samples yet")

    fingerprint = property(lambda self: self.manifest["fingerprint"])
    num_layers = property(lambda self: int(self.manifest["num_moe_layers"]))
    layer_ids = property(lambda self: list(self.manifest["layer_ids"]))
    num_experts = property(lambda self: int(self.manifest["num_experts"]))
    top_k = property(lambda self: int(self.manifest["top_k"]))
    d_model = property(lambda self: int(self.manifest["d_model"]))
    samples = property(lambda self: int(self.manifest["samples"]))

    def _read(self, key: str) -> torch.Tensor:
        parts = []
        for shard in self.manifest["shards"]:
            with safe_open(str(self.dir / shard["file"]), framework="pt") as f:
                parts.append(f.get_tensor(key))
        return torch.cat(parts)

    def prompt_ids(self) -> torch.Tensor:
        """prompt_id [N] int64 of every sample, in storage order."""
        return self._read("prompt_id").long()

    def layer(self, i: int, mask: torch.Tensor | None = None) -> LayerData:
        """MoE layer i's samples, restricted to `mask` [N] bool when given."""
        if not 0 <= i < self.num_layers:
            raise IndexError(f"MoE layer {i} out of range: the trace set has {self.num_layers}")
        x, scores, topk = (
            self._read(f"x.{i}"),
            self._read(f"scores.{i}").float(),
            self._read(f"topk.{i}").long(),
        )
        if mask is not None:
            x, scores, topk = x[mask], scores[mask], topk[mask]
        return LayerData(x=x, scores=scores, topk=topk)

    def routers(self) -> dict[str, torch.Tensor]:
        """router.{i} [E, d] float32 (and router_bias.{i} [E]) as collected."""
        with safe_open(str(self.dir / ROUTERS), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def split(self, holdout_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train_mask, heldout_mask) over samples, split by prompt: a prompt's tokens all go to one side."""
        return split_by_prompt(self.prompt_ids(), holdout_frac, seed)

    def summary(self) -> dict[str, object]:
        m = self.manifest
        return {
            "traces": str(self.dir),
            "samples": m["samples"],
            "prompts": m["prompts_done"],
            "shards": len(m["shards"]),
            "x_dtype": m["x_dtype"],
        }


def split_by_prompt(
    prompt_id: torch.Tensor, holdout_frac: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random `holdout_frac` of the prompts (at least one, never all when there are two) held out."""
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac}")
    prompts = prompt_id.unique()  # sorted
    if len(prompts) < 2:
        raise ValueError("a by-prompt split needs at least 2 prompts in the trace set")
    g = torch.Generator().manual_seed(seed)
    perm = prompts[torch.randperm(len(prompts), generator=g)]
    n_held = min(len(prompts) - 1, max(1, math.ceil(holdout_frac * len(prompts))))
    heldout = torch.isin(prompt_id, perm[:n_held])  # [N]
    return ~heldout, heldout
