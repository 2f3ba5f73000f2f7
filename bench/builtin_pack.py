"""The built-in model's artefact: checkpoint folder, attribution, the shipped-bundle check, the tarball.

The folder `bench/train_moe.py --size builtin` packs is what `engine/model/assets/` holds once unpacked:

    config.json, generation_config.json, model.safetensors (bf16)   the checkpoint (transformers layout)
    ATTRIBUTION.md        what the weights were trained on, and the licences (books, MMLU questions)
    training.json         the training report (config, tokens seen, schedule, held-out perplexities)
    predictors/           the predictor bundle the engine uses by default (manifest.json,
                          predictors.safetensors) and heldout_prompts.jsonl: MMLU prompts the predictors never
                          saw, with the recall the bundle reached on them (manifest `shipped_check`); the CPU
                          test tests/engine/model/test_builtin_model.py measures it again on the shipped files.

The tokenizer (`engine/model/assets/tokenizer.json`) is committed separately and is not in the tarball.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
from torch import nn

TARBALL = "builtin_checkpoint.tar.gz"
MAX_TARBALL_BYTES = 16 * 1024 * 1024
CHECK_PROMPTS = "heldout_prompts.jsonl"


def save_checkpoint(model: nn.Module, out: Path) -> Path:
    """Write `model` as a bf16 transformers checkpoint (model is converted in place; router logits off)."""
    out.mkdir(parents=True, exist_ok=True)
    model.set_experts_implementation("eager")
    model.config.output_router_logits = False
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def attribution(books: list[dict], data_stats: dict) -> str:
    lines = [
        "# Built-in model: training data and licences",
        "",
        "The weights in this folder were trained from scratch by `bench/train_moe.py --size builtin` (see",
        "docs/builtin-model.md) on public-domain English books from Project Gutenberg, and nothing else.",
        "",
        "## Training text: Project Gutenberg books",
        "",
        f"{data_stats.get('train_books', len(books))} books, {data_stats.get('train_chars', 0):,} characters: the",
        "`gutenberg_train` split of the project's data set (from github.com/rcdm-uga/Gutenberg_Text, commit",
        "a0b16d35a9851168ce9ac649851c17b7ab08d48e), Project Gutenberg header, footer and licence text removed.",
        "Public domain in the USA; books by authors, illustrators or translators who died after 1954 or whose",
        "status is unclear were excluded. Some translations may still be protected in some countries outside",
        "the USA. This is not an official Project Gutenberg product. Thanks to Project Gutenberg",
        "(https://www.gutenberg.org) and its volunteers.",
        "",
        "| author | title | PG ebook |",
        "|---|---|---|",
    ]
    lines += [f"| {b['author']} | {b['title']} | {b['ebook']} |" for b in books]
    lines += [
        "",
        "## Predictor traces and held-out check prompts: MMLU",
        "",
        "The predictors in `predictors/` were trained on routing traces of this model over MMLU test questions",
        '(Hendrycks et al., "Measuring Massive Multitask Language Understanding", ICLR 2021), and',
        f"`predictors/{CHECK_PROMPTS}` holds some of those questions. MMLU is released under the MIT licence:",
        "",
        "    Copyright (c) 2020 Dan Hendrycks",
        "",
        "    Permission is hereby granted, free of charge, to any person obtaining a copy of this software and",
        '    associated documentation files (the "Software"), to deal in the Software without restriction,',
        "    including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,",
        "    and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,",
        "    subject to the following conditions: The above copyright notice and this permission notice shall be",
        '    included in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS",',
        "    WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.",
        "",
        "## Held-out text (measured on, never trained on)",
        "",
        "Gutenberg valid books (same source) and WikiText-2 valid/test (Merity et al. 2016, CC BY-SA 3.0).",
        "",
    ]
    return "\n".join(lines)


def write_check_prompts(bundle_dir: Path, prompts: list[str]) -> Path:
    path = bundle_dir / CHECK_PROMPTS
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


def shipped_check(model: nn.Module, tokenizer, bundle_dir: Path, work: Path) -> dict:
    """Recall of the bundle in `bundle_dir` on its own check prompts, traced on `model` (as the test does)."""
    from engine.prefetch.bundle import load_bundle
    from predictors.collect import collect, read_prompts
    from predictors.evaluate import evaluate
    from predictors.traces import TraceSet

    prompts = read_prompts(bundle_dir / CHECK_PROMPTS)
    collect(model, tokenizer, prompts, work, progress=False, resume=False)
    bank, manifest = load_bundle(bundle_dir)
    result = evaluate(bank, manifest, TraceSet(work), split="all", device="cpu", latency_iters=200)
    o = result["overall"]["predictor"]
    return {
        "prompts": len(prompts),
        "samples": result["samples_per_layer"],
        "recall_at_k": o["recall_at_k"],
        "set_accuracy": o["set_accuracy"],
        "top1_accuracy": o["top1_accuracy"],
        "overprov_recall": o["overprov_recall"],
        "cpu_latency_ms_median": o["latency_ms_median"],
        "how": "traced on the saved checkpoint in float32 on the CPU, evaluated with split=all",
    }


def pack(folder: Path, out: Path) -> dict:
    """Tar+gzip the contents of `folder` (paths relative to it) into `out`; size and file list."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(folder)))
    size = out.stat().st_size
    return {
        "file": out.name,
        "bytes": size,
        "fits": size <= MAX_TARBALL_BYTES,
        "files": {str(f.relative_to(folder)): f.stat().st_size for f in files},
    }
