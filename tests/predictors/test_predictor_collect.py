"""Prompt reading, fingerprints, and trace collection on tiny checkpoints (hooks, resume, cap, batching)."""

from __future__ import annotations

import json

import pytest
import torch
from families import build_model
from predictor_fixtures import byte_tokenizer
from transformers import AutoModelForCausalLM

from engine.model.fingerprint import model_fingerprint
from engine.model.model_map import find_moe_layers
from predictors.collect import collect, read_prompts
from predictors.traces import TraceSet


def test_read_prompts_formats(tmp_path, mmlu_csv):
    jsonl = tmp_path / "p.jsonl"
    lines = [
        {"text": "plain"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
        {"instruction": "Fix this.", "instances": [{"input": "teh cat"}]},
        {"turns": ["one", "two"]},
    ]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_prompts(jsonl) == ["plain", "system: be brief\nuser: hi", "Fix this.\n\nteh cat", "one\ntwo"]
    header = tmp_path / "q.csv"
    header.write_text('id,question\n1,"What, exactly?"\n2,Why\n')
    assert read_prompts(header) == ["What, exactly?", "Why"]
    mmlu = read_prompts(mmlu_csv)
    assert len(mmlu) == 100
    assert mmlu[0].startswith("Find the degree") and "\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:" in mmlu[0]
    assert len(read_prompts(mmlu_csv.parent)) > 10_000
    (tmp_path / "bad.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


def test_fingerprint_agrees_across_load_dtypes_and_sees_router_changes(qwen3_ckpt):
    fp32 = AutoModelForCausalLM.from_pretrained(qwen3_ckpt, dtype=torch.float32)
    bf16 = AutoModelForCausalLM.from_pretrained(qwen3_ckpt, dtype=torch.bfloat16)
    assert model_fingerprint(fp32) == model_fingerprint(bf16)
    with torch.no_grad():
        find_moe_layers(fp32)[2].router.weight[0, 0] += 1.0
    assert model_fingerprint(fp32) != model_fingerprint(bf16)
    assert model_fingerprint(build_model("qwen3_moe", seed=1)) != model_fingerprint(bf16)


def _prompts(mmlu_csv, n):
    return read_prompts(mmlu_csv)[:n]


def test_collect_records_router_truth(tmp_path, mmlu_csv):
    model, tok = build_model("qwen3_moe"), byte_tokenizer()
    prompts = _prompts(mmlu_csv, 6)
    manifest = collect(
        model,
        tok,
        prompts,
        tmp_path / "t",
        max_prompt_tokens=40,
        shard_size=100,
        progress=False,
        x_dtype="fp16",
        scores_dtype="float32",
    )
    ts = TraceSet(tmp_path / "t")
    assert manifest["prompts_done"] == 6 and ts.samples == 6 * 40 and ts.layer_ids == [0, 1, 2]
    assert [s["samples"] for s in manifest["shards"]] == [120, 120]  # shards end on prompt boundaries
    # Recompute prompt 0 by hand: layernorm output and router decisions of a plain forward.
    ids = torch.tensor([tok(prompts[0])["input_ids"][:40]])
    seen = {}
    layer = find_moe_layers(model)[1]
    hooks = [
        layer.input_layernorm.register_forward_hook(lambda m, i, o: seen.update(x=o[0])),
        layer.router.register_forward_hook(lambda m, i, o: seen.update(y=i[0].reshape(-1, 64))),
    ]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    data, pid = ts.layer(1), ts.prompt_ids()
    assert torch.allclose(data.x[pid == 0].float(), seen["x"], atol=1e-2, rtol=1e-2)
    assert not torch.allclose(seen["x"], seen["y"], atol=1e-2)  # the router reads the post-attention state
    logits = torch.nn.functional.linear(seen["y"], layer.router.weight)
    assert torch.allclose(data.scores[pid == 0], logits.softmax(-1), atol=1e-4)
    assert torch.equal(data.topk[pid == 0].sort(1).values, logits.topk(2).indices.sort(1).values)
    assert ts.routers()["router.1"].shape == (8, 64)
    assert not any(m._forward_hooks for m in model.modules())  # hooks are removed


def test_collect_cap_resume_and_batching(tmp_path, mmlu_csv):
    model, tok = build_model("qwen3_moe"), byte_tokenizer()
    prompts = _prompts(mmlu_csv, 12)
    first = collect(
        model,
        tok,
        prompts,
        tmp_path / "r",
        max_samples=150,
        max_prompt_tokens=32,
        shard_size=64,
        progress=False,
    )
    assert first["samples"] == 150 and first["prompts_done"] == 5  # 4 x 32 + 22 of the fifth
    shard0 = (tmp_path / "r" / "shard-00000.safetensors").read_bytes()
    again = collect(
        model,
        tok,
        prompts,
        tmp_path / "r",
        max_samples=300,
        max_prompt_tokens=32,
        shard_size=64,
        progress=False,
    )
    assert again["samples"] == 300 and again["prompts_done"] == 10
    assert (tmp_path / "r" / "shard-00000.safetensors").read_bytes() == shard0
    assert TraceSet(tmp_path / "r").prompt_ids().unique().tolist() == list(range(10))
    batched = collect(
        model,
        tok,
        prompts,
        tmp_path / "b",
        max_samples=300,
        max_prompt_tokens=32,
        shard_size=64,
        progress=False,
        batch_size=4,
        resume=False,
    )
    assert batched["samples"] == 300
    a, b = TraceSet(tmp_path / "r"), TraceSet(tmp_path / "b")
    # Prompt 4 was cut at 22 tokens by the first cap; the fresh batched run has it whole (and stops earlier).
    keep_a = (a.prompt_ids() != 4) & (a.prompt_ids() < 9)
    keep_b = (b.prompt_ids() != 4) & (b.prompt_ids() < 9)
    assert keep_a.sum() == keep_b.sum() == 8 * 32
    for i in range(3):
        la, lb = a.layer(i), b.layer(i)
        assert torch.allclose(la.x[keep_a].float(), lb.x[keep_b].float(), atol=2e-2)
        assert (la.topk[keep_a].sort(1).values == lb.topk[keep_b].sort(1).values).float().mean() > 0.99
    other = build_model("qwen3_moe", seed=5)
    with pytest.raises(ValueError, match="another model"):
        collect(other, tok, prompts, tmp_path / "r", max_samples=400, progress=False)
