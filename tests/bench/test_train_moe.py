"""bench/train_moe.py end to end on the CPU at toy size, on a small synthetic data folder.

One `--smoke` run (train -> checkpoint -> MMLU and chat traces -> routing statistics against a random twin ->
both predictor pairings -> evaluation -> shipped bundle check -> tarball), then: the tarball unpacks into a
folder the engine's loader serves with a bundle whose fingerprint matches, and the report renders.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the of and to a in that it was he his with as had for her she you not but at on be they by which "
    "this all from have one were so said my there their been would what when if no could more out into "
    "time man who them some only then him little very now upon old great like over before such first "
    "house sea night ship day hand eyes long way good young life world men down water light far land"
).split()


def _text(rng: random.Random, chars: int) -> str:
    paras, n = [], 0
    while n < chars:
        sents = []
        for _ in range(rng.randint(2, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            sents.append(" ".join(words).capitalize() + rng.choice(".!?"))
        paras.append(" ".join(sents))
        n += len(paras[-1])
    return "\n\n".join(paras)


def write_data(root: Path) -> Path:
    rng = random.Random(0)
    (root / "gutenberg").mkdir(parents=True)
    for split, books in (("train", 4), ("valid", 1)):
        with gzip.open(root / "gutenberg" / f"gutenberg_{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for b in range(books):
                rec = {
                    "author": f"Author {b}",
                    "title": f"Book {b}",
                    "ebook": str(100 + b),
                    "text": _text(rng, 40_000),
                }
                f.write(json.dumps(rec) + "\n")
    (root / "wikitext-2").mkdir()
    for split in ("valid", "test"):
        (root / "wikitext-2" / f"{split}.txt").write_text(
            " = Title = \n\n " + _text(rng, 8000).replace(".", " .") + " \n"
        )
    (root / "mmlu" / "test").mkdir(parents=True)
    with (root / "mmlu" / "test" / "toy_test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        for _ in range(60):
            w.writerow([_text(rng, 120) + "?", *(rng.choice(WORDS) for _ in range(4)), "A"])
    (root / "vicuna_bench").mkdir()
    (root / "vicuna_bench" / "question.jsonl").write_text(
        "".join(json.dumps({"question_id": i, "turns": [_text(rng, 60)]}) + "\n" for i in range(30))
    )
    return root


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train_moe")
    data = write_data(tmp / "data")
    out = tmp / "out"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "train_moe.py"),
        "--smoke",
        "--data",
        str(data),
        "--out",
        str(out),
        "--work",
        str(tmp / "work"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # toy sizes: one thread, no spinning against a busy machine
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_smoke_run_records_every_step(smoke):
    run = json.loads((smoke / "train_moe_builtin_smoke.json").read_text())
    assert run["model"]["experts_implementation"] in ("train_grouped", "eager")
    lm = run["lm"]
    assert lm["train"]["steps"] > 0 and lm["train"]["tokens_seen"] > 0
    assert set(lm["perplexity"]) == {"gutenberg_valid", "wikitext2_valid", "wikitext2_test"}
    assert all(v["ppl"] > 1 and v["bits_per_byte"] > 0 for v in lm["perplexity"].values())
    assert run["traces"]["mmlu"]["samples"] > 0 and run["traces"]["chat"]["samples"] > 0
    for side in ("trained", "random", "random_embed_std1"):
        stats = run["routing"][side]
        assert len(stats["layers"]) == run["model"]["config"]["num_hidden_layers"]
        assert 0 < stats["mean"]["usage_entropy_bits"] <= stats["max_entropy_bits"] + 1e-9
        assert 0 <= stats["mean"]["reuse_any"] <= 1
    assert set(run["predictors"]) == {"arch1_rank_bce", "arch2_wbce"}
    for r in run["predictors"].values():
        for split in ("mmlu_heldout", "chat"):
            o = r[split]["overall"]
            assert 0 <= o["predictor"]["recall_at_k"] <= 1 and "latency_ms_median" in o["predictor"]
            assert o["router"] is not None and o["prior"] is not None
    assert run["shipped"]["check"]["samples"] > 0
    assert run["pack"]["fits"]
    for name in ("train_moe_builtin_smoke.md", "train_moe_builtin_smoke.png", "train_moe_builtin_smoke.log"):
        assert (smoke / name).stat().st_size > 0


def test_tarball_is_a_checkpoint_the_engine_serves_with_its_bundle(smoke, tmp_path):
    from engine.model.builtin import builtin_tokenizer
    from engine.model.fingerprint import model_fingerprint
    from engine.model.loader import CacheBudget, load_checkpoint
    from engine.prefetch.bundle import load_bundle

    with tarfile.open(smoke / "builtin_checkpoint.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    for f in (
        "config.json",
        "model.safetensors",
        "ATTRIBUTION.md",
        "training.json",
        "predictors/manifest.json",
        "predictors/predictors.safetensors",
        "predictors/heldout_prompts.jsonl",
    ):
        assert f in names
    assert "train_grouped" not in (tmp_path / "config.json").read_text()
    om = load_checkpoint(
        tmp_path, torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0), tokenizer=builtin_tokenizer()
    )
    bank, manifest = load_bundle(tmp_path / "predictors", expected_fingerprint=model_fingerprint(om.model))
    assert len(bank) == len(om.layers) and manifest["shipped_check"]["recall_at_k"] >= 0
    assert "Gutenberg" in (tmp_path / "ATTRIBUTION.md").read_text()


def test_report_merges_runs_and_names_missing_ones(smoke, tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.accuracy_report import write_report

    md, js, png = write_report([smoke / "train_moe_builtin_smoke.json", tmp_path / "absent.json"], tmp_path)
    text = md.read_text()
    assert "Phi-mini-MoE" in text and "97.62" in text and "recall@k" in text and "absent.json" in text
    data = json.loads(js.read_text())
    assert (
        "builtin_smoke" in data["models"]
        and data["paper_table4"]["DeepSeek-V2-Lite"]["arch1"]["exact"] == 93.03
    )
    assert png.stat().st_size > 0


def test_sizes():
    sys.path.insert(0, str(ROOT))
    from bench.lm_train import size_named

    builtin, bench = size_named("builtin"), size_named("bench")
    assert (builtin.config["num_experts"], builtin.config["num_experts_per_tok"]) == (16, 2)
    assert (bench.config["num_experts"], bench.config["num_experts_per_tok"]) == (64, 6)
    assert bench.config["num_hidden_layers"] >= 12 and builtin.pack and not bench.pack
    with pytest.raises(ValueError):
        size_named("huge")
