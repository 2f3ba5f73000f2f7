"""A missing, corrupt or mismatched checkpoint fails with a message naming the file and the tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.api.errors import ModelLoadError
from engine.model.loader import CacheBudget, load_checkpoint

CPU, F32, FULL = torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0)


@pytest.fixture()
def ckpt(checkpoints, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen3_moe"], dst)
    return dst


def test_no_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_checkpoint(tmp_path, CPU, F32, FULL)


def test_corrupt_file_is_named(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: corrupt"):
        load_checkpoint(ckpt, CPU, F32, FULL)


def test_truncated_file_is_named(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_checkpoint(ckpt, CPU, F32, FULL)


def test_missing_tensor_is_named(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight is missing"):
        load_checkpoint(ckpt, CPU, F32, FULL)


def test_wrong_shape_names_file_and_tensor(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 32)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*o_proj"):
        load_checkpoint(ckpt, CPU, F32, FULL)


def test_config_that_does_not_match_the_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["moe_intermediate_size"] = 48
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*experts"):
        load_checkpoint(ckpt, CPU, F32, FULL)


def test_shard_listed_in_index_but_missing(ckpt):
    f = ckpt / "model.safetensors"
    keys = list(load_file(f))
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "model-00002-of-00002.safetensors" for k in keys}})
    )
    with pytest.raises(
        ModelLoadError, match="model-00002-of-00002.safetensors: listed in the index but missing"
    ):
        load_checkpoint(ckpt, CPU, F32, FULL)
