"""The random-weight model of a preset shape on the benchmark's device, and the benchmark's text.

A run builds the preset (or, with `--smoke`, a shrunken shape of it on the CPU) with every expert in host
memory and a full cache, and cuts the text it decodes from MMLU prompts that are never traced.

Imports `engine.model` and `predictors.collect` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.decode_lib.record import log
from engine.model.builtin import builtin_tokenizer
from engine.model.loader import CacheBudget, build_synthetic
from engine.model.presets import preset_config
from predictors.collect import read_prompts

PROMPT_TOKENS = 64  # the prompt of every decode run
SMOKE = dict(
    num_hidden_layers=3,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=16,
    num_experts_per_tok=2,
)


@dataclass
class Bench:
    """The model under test and what the measurements share about it."""

    om: object  # engine.model.loader.OffloadedModel
    tok: object
    device: torch.device
    dtype: torch.dtype
    tag: str  # names the run's files: decode_{tag}.json, .png

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def build_bench(preset: str, smoke: bool, embed_std: float) -> Bench:
    """The preset with random weights, every expert resident (the sweep sizes the cache per config)."""
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    tok = builtin_tokenizer()
    cfg = preset_config(preset, **({**SMOKE, "vocab_size": len(tok)} if smoke else {}))
    tag = preset.replace("-", "_") + ("_smoke" if smoke else "")
    t0 = time.perf_counter()
    om = build_synthetic(cfg, device, dtype, CacheBudget(fraction=1.0), name=preset, embed_std=embed_std)
    log(
        f"built {preset}: {om.store.total_experts} experts, {om.store.nbytes / 1e9:.1f} GB pinned, {time.perf_counter() - t0:.0f}s"
    )
    return Bench(om, tok, device, dtype, tag)


def spread(prompts: list[str], n: int) -> list[str]:
    """`n` prompts taken evenly over the list: MMLU files come one subject after another, so the first n
    would all be one subject (a random-weight model routes by token, and predictors trained on algebra
    questions then meet another vocabulary in the benchmark's text)."""
    if n >= len(prompts):
        return list(prompts)
    step = len(prompts) / n
    return [prompts[int(i * step)] for i in range(n)]


def prompt_sets(prompts_dir, collect_prompts: int, diagnose: bool) -> tuple[list[str], list[str], list[str]]:
    """All prompts; those to trace (spread over every subject, never the last 80, whose text the decode
    runs feed); and, with `diagnose`, some of that text for the offline recall check."""
    prompts = read_prompts(prompts_dir)
    fresh = prompts[-80:-60] if diagnose else []
    return prompts, spread(prompts[:-80], collect_prompts), fresh


@dataclass
class DecodeText:
    segments: list[tuple[list[int], list[int]]]  # [(prompt, fed tokens)], one per run, the first warms up
    long_prompt: list[int]  # the prefill measurement's prompt


def decode_text(tok, prompts: list[str], runs: int, new_tokens: int, prefill_tokens: int) -> DecodeText:
    """The decode runs' text (the last 80 prompts, never traced): each run its own stretch of it."""
    text = " ".join(prompts[-80:])  # not among the traced prompts
    ids = tok.encode(text, add_special_tokens=False)
    seg = PROMPT_TOKENS + new_tokens
    if len(ids) < seg * (runs + 1) + prefill_tokens:
        raise SystemExit(f"the benchmark text has only {len(ids)} tokens; lower --new-tokens or --runs")
    segments = [
        (ids[i * seg : i * seg + PROMPT_TOKENS], ids[i * seg + PROMPT_TOKENS : (i + 1) * seg])
        for i in range(runs + 1)
    ]
    return DecodeText(segments, ids[-prefill_tokens:])
