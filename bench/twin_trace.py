"""The trained twin's routing traces (`bench/train_twin.py`, phase 2) and the streams the cache figures replay.

Three trace sets, each with `predictors.collect` (pre-attention inputs, router scores and true top-k per
MoE layer and token):
- `mmlu`: MMLU test questions, shuffled with the run's seed, up to `shape.trace_tokens` tokens: the
  predictors' training and held-out data;
- `chat`: the chat prompt sets (vicuna_bench, mt_bench, self_instruct, dolly) in the chat template, up to
  `shape.chat_tokens` tokens: routing statistics out of the training domain;
- `cold`: `shape.cold_streams` WikiText-2 test paragraphs of at least `shape.cold_len` tokens, cut to that
  length: the long continuous streams the cold-cache figures replay (the published ones are 256 decode
  tokens), in text the twin never trained on.
`layer_streams` turns a trace set into per-layer lists of per-prompt [T, k] id arrays (storage order is
prompt by prompt, tokens in order). Imports torch, numpy, bench.lm_data and predictors.{collect, traces}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.lm_data import chat_prompts, detok_wikitext, mmlu_prompts
from predictors.collect import collect
from predictors.traces import TraceSet


def cold_passages(data: Path, tokenizer, count: int, length: int) -> list[str]:
    """The first `count` WikiText-2 test paragraphs (detokenised) of at least `length` tokens, in file order."""
    raw = (data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    out = []
    for line in detok_wikitext(raw).splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        if len(tokenizer(line, add_special_tokens=False)["input_ids"]) >= length:
            out.append(line)
            if len(out) == count:
                break
    return out


def trace_all(
    model, tokenizer, data: Path, shape, work: Path, device: torch.device, seed: int, say=print
) -> dict:
    """Collect the mmlu, chat and cold trace sets under `work`; returns {name: TraceSet} and what was read.
    `say` gets one line per set with its wall time."""
    batch = 32 if device.type == "cuda" else 4
    kw = {"batch_size": batch, "progress": False, "resume": False}

    def timed(name, prompts, **extra):
        t0 = time.monotonic()
        m = collect(model, tokenizer, prompts, work / f"traces_{name}", **kw, **extra)
        say(f"traces ({name}): {m.get('samples', '?')} tokens in {time.monotonic() - t0:.1f} s")

    mmlu = mmlu_prompts(data, seed)
    timed("mmlu", mmlu, max_samples=shape.trace_tokens)
    chats, used = chat_prompts(data)
    timed("chat", chats, max_samples=shape.chat_tokens, chat_template=True)
    cold = cold_passages(data, tokenizer, shape.cold_streams, shape.cold_len)
    timed("cold", cold, max_prompt_tokens=shape.cold_len)
    sets = {name: TraceSet(work / f"traces_{name}") for name in ("mmlu", "chat", "cold")}
    info = {name: ts.summary() for name, ts in sets.items()}
    info["chat"]["files"] = used
    info["cold"]["source"] = (
        f"wikitext-2/test.txt: first {len(cold)} paragraphs of >= {shape.cold_len} tokens"
    )
    return {"sets": sets, "info": info, "mmlu_prompts": mmlu}


def layer_streams(
    traces: TraceSet, max_len: int | None = None, max_streams: int | None = None
) -> list[list[np.ndarray]]:
    """streams[l][p] = MoE layer l's routed ids [T, k] (int64) for prompt p, tokens in order (cut to
    `max_len`), for the first `max_streams` prompts."""
    pid = traces.prompt_ids().numpy()
    cuts = np.flatnonzero(np.diff(pid)) + 1
    bounds = list(zip(np.r_[0, cuts], np.r_[cuts, pid.size], strict=True))[:max_streams]
    out = []
    for i in range(traces.num_layers):
        topk = traces.layer(i).topk.numpy()  # [N, k] int64
        out.append([topk[a : (b if max_len is None else min(b, a + max_len))] for a, b in bounds])
    return out
