"""Helpers for the predictors tests: tiny checkpoints with a byte-level tokenizer, synthetic traces, MMLU paths."""

from __future__ import annotations

from pathlib import Path

import torch
from families import write_checkpoint
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SHARED_DATA = Path(__file__).resolve().parents[2] / "../shared/data"
MMLU_TEST = SHARED_DATA / "mmlu" / "test"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 3 specials + 256 bytes = 259 ids (< the families' 320)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_checkpoint(family: str, out: Path, seed: int = 0) -> Path:
    write_checkpoint(family, out, seed=seed)
    byte_tokenizer().save_pretrained(out)
    return out


def write_synthetic_traces(
    out: Path,
    *,
    n_prompts: int = 200,
    tokens: int = 20,
    d: int = 16,
    experts: int = 8,
    k: int = 2,
    layers: int = 2,
    seed: int = 0,
    temperature: float = 3.0,
) -> Path:
    """A trace set with a planted linear ranking: affinity = softmax(temperature * W_l x), top-k of it."""
    from predictors.traces import TraceWriter

    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(experts, d, generator=g) / d**0.5 for _ in range(layers)]
    meta = {
        "fingerprint": f"synthetic-{seed}",
        "model_type": "synthetic",
        "num_moe_layers": layers,
        "layer_ids": list(range(layers)),
        "num_experts": experts,
        "top_k": k,
        "d_model": d,
    }
    writer = TraceWriter(out, meta, shard_size=1000, resume=False)
    writer.write_routers({f"router.{i}": w for i, w in enumerate(ws)})
    for p in range(n_prompts):
        xs = [torch.randn(tokens, d, generator=g) for _ in range(layers)]  # [T, d]
        scores = [(temperature * x @ w.T).softmax(-1) for x, w in zip(xs, ws, strict=True)]  # [T, E]
        writer.add_prompt(p, xs, scores, [s.topk(k, dim=-1).indices for s in scores])
        writer.end_prompt(p + 1)
    writer.flush()
    return out
