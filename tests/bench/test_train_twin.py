"""bench/train_twin.py end to end on the CPU at toy size (the DeepSeek-V2-Lite twin), on synthetic data.

One `--smoke --table3` run (train -> traces -> routing statistics and cold caches -> predictors -> Table 3 ->
replay artefact -> PNG), then: the JSON has every phase's fields, the replay artefact loads and its arrays are
layers x tokens x k (k'), Belady's hit rate is never below LRU's or LFU's, and the building blocks
(shapes, reuse distances, the sequence-wise balance loss) behave on hand-made inputs.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the of and to a in that it was he his with as had for her she you not but at on be they by which "
    "this all from have one were so said my there their been would what when if no could more out into "
    "time man who them some only then him little very now upon old great like over before such first"
).split()


def _text(rng: random.Random, chars: int) -> str:
    paras, n = [], 0
    while n < chars:
        sents = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
            for _ in range(4)
        ]
        paras.append(" ".join(sents))
        n += len(paras[-1])
    return "\n\n".join(paras)


def write_data(root: Path) -> Path:
    rng = random.Random(0)
    (root / "gutenberg").mkdir(parents=True)
    for split, books in (("train", 3), ("valid", 1)):
        with gzip.open(root / "gutenberg" / f"gutenberg_{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for b in range(books):
                rec = {"author": f"A{b}", "title": f"B{b}", "ebook": str(b), "text": _text(rng, 30_000)}
                f.write(json.dumps(rec) + "\n")
    (root / "wikitext-2").mkdir()
    for split in ("valid", "test"):
        paras = [" " + _text(rng, 600).replace("\n\n", " ").replace(".", " .") + " " for _ in range(8)]
        (root / "wikitext-2" / f"{split}.txt").write_text(" = Title = \n" + "\n".join(paras) + "\n")
    (root / "mmlu" / "test").mkdir(parents=True)
    with (root / "mmlu" / "test" / "toy_test.csv").open("w", newline="") as f:
        w = csv.writer(f)
        for _ in range(60):
            w.writerow([_text(rng, 120) + "?", *(rng.choice(WORDS) for _ in range(4)), "A"])
    (root / "mt_bench").mkdir()
    (root / "mt_bench" / "question.jsonl").write_text(
        "".join(json.dumps({"question_id": i, "turns": [_text(rng, 80), "more"]}) + "\n" for i in range(30))
    )
    return root


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train_twin")
    data = write_data(tmp / "data")
    out = tmp / "out"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "train_twin.py"),
        "--shape",
        "deepseek-v2-lite",
        "--smoke",
        "--table3",
        "--lookahead",
        "1",
        "--data",
        str(data),
        "--out",
        str(out),
        "--work",
        str(tmp / "work"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # toy sizes: one thread, no spinning against a busy machine
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_smoke_run_records_every_phase(smoke):
    run = json.loads((smoke / "train_twin_deepseek-v2-lite_smoke.json").read_text())
    assert run["kind"] == "train_twin" and run["shape"] == "deepseek-v2-lite"
    assert set(run["timings"]) >= {
        "data",
        "train",
        "traces",
        "routing",
        "predictors",
        "table3",
        "replay",
        "lookahead",
    }
    (la,) = run["lookahead"]["distances"]
    assert la["distance"] == 1 and [(x["source_layer"], x["target_layer"]) for x in la["layers"]] == [(0, 1)]
    tr = run["train"]
    assert tr["tokens_seen"] > 0 and tr["train_seconds"] > 0 and tr["final_train_loss"] > 0
    assert tr["perplexity"]["wikitext2_test"]["ppl"] > 1
    cfg = run["model"]["config"]
    assert cfg["first_k_dense_replace"] == 1 and cfg["n_shared_experts"] == 2 and not cfg["norm_topk_prob"]
    for name in ("mmlu", "chat", "cold"):
        assert run["traces"][name]["samples"] > 0
    cold = run["routing"]["cold"]
    assert 0 < cold["stats"]["mean"]["usage_entropy_norm"] <= 1
    assert 0 <= cold["reuse"]["reuse_next"] <= cold["reuse"]["reuse_within_8"] <= 1
    vs = cold["vs_published"]
    assert [r["published_slots"] for r in vs["lru"]] == [24, 73, 146, 244]
    assert vs["reuse"]["reuse_next"]["published"] == 0.45
    pred = run["predictors"]
    nl = len(pred["layers"])
    assert nl == 2 and pred["arch"] == 2 and pred["loss"] == "wbce"
    for row in pred["layers"]:
        assert 0 <= row["recall_at_k"] <= 1 and 0 <= row["top1_accuracy"] <= 1
    cells = run["table3"]["cells"]
    assert {(c["arch"], c["loss"]) for c in cells} == {
        (a, loss) for a in (1, 2) for loss in ("mse", "wbce", "focal", "rank_bce")
    }
    assert (smoke / "train_twin_deepseek-v2-lite_smoke.png").stat().st_size > 10_000


def test_belady_never_below_lru_or_lfu(smoke):
    run = json.loads((smoke / "train_twin_deepseek-v2-lite_smoke.json").read_text())
    for name in ("cold", "chat"):
        sizes = run["routing"][name]["cache"]["sizes"]
        assert len(sizes) >= 4
        for row in sizes:
            assert row["belady"] >= row["lru"] - 1e-12 and row["belady"] >= row["lfu"] - 1e-12, row
            for b, lru in zip(row["belady_per_layer"], row["lru_per_layer"], strict=True):
                assert b >= lru
        hits = [row["lru"] for row in sizes]
        assert hits == sorted(hits)  # LRU has no anomaly: more slots never hit less


def test_replay_artefact_loads_with_matching_shapes(smoke):
    from bench.twin_replay import load

    manifest, a = load(smoke / "twin_replay_deepseek-v2-lite_smoke.json")
    run = json.loads((smoke / "train_twin_deepseek-v2-lite_smoke.json").read_text())
    nl, n, k, kp = manifest["num_moe_layers"], manifest["tokens"], manifest["top_k"], manifest["k_prime"]
    assert (nl, k, kp) == (2, 4, 6) and n > 0
    assert a["routed_ids"].shape == (nl, n, k) and a["routed_ids"].dtype == np.uint8
    assert a["routed_weights"].shape == (nl, n, k) and a["routed_weights"].dtype == np.float16
    assert a["predicted_ids"].shape == (nl, n, kp)
    # the --lookahead 1 bank's predictions: row 0 names layer 1's experts from layer 0's input
    assert manifest["ahead"] == [1] and a["predicted_ids_ahead_1"].shape == (nl - 1, n, kp)
    assert int(a["predicted_ids_ahead_1"].max()) < run["model"]["config"]["n_routed_experts"]
    assert not np.array_equal(
        a["predicted_ids_ahead_1"][0], a["predicted_ids"][0]
    )  # another bank, another layer
    assert a["offsets"][-1] == n and len(manifest["prompts"]) == a["offsets"].size - 1
    assert a["layer_ids"].tolist() == [1, 2]  # the first layer is dense
    assert manifest["tokenizer_sha256"] == run["tokenizer_sha256"] and manifest["bytes"] < 20 * 2**20
    assert (a["routed_ids"] < 16).all() and (a["predicted_ids"] < 16).all()
    srt = np.sort(a["routed_ids"], axis=-1)
    assert (np.diff(srt.astype(int), axis=-1) > 0).all()  # k distinct experts per token
    w = a["routed_weights"].astype(np.float32)
    assert (np.diff(w, axis=-1) <= 1e-3).all() and (w > 0).all()  # best weight first
    assert {p["source"] for p in manifest["prompts"]} == {"mmlu/test", "mt_bench/question.jsonl"}


def test_real_shapes_keep_the_topology():
    from bench.twin_shapes import build_twin, inner_model, twin_shape
    from engine.model.model_map import find_moe_layers

    want = {
        "qwen3-30b-a3b": (48, 48, 128, 8),
        "deepseek-v2-lite": (27, 26, 64, 6),
        "phi-mini-moe": (32, 32, 16, 2),
    }
    for name, (layers, moe, experts, k) in want.items():
        with torch.device("meta"):
            model = inner_model(build_twin(twin_shape(name, 4096), torch.device("meta"), 0))
        found = find_moe_layers(model)
        assert (model.config.num_hidden_layers, len(found)) == (layers, moe)
        assert (found[0].experts.num_experts, model.config.num_experts_per_tok) == (experts, k)
        assert model.config.hidden_size == 384


def test_reuse_distances_and_cold_cache_by_hand():
    from bench.twin_cache import cold_cache, next_use_distances, reuse

    s = np.array([[0, 1], [1, 2], [0, 2], [3, 1]])
    d = next_use_distances(s, 4).reshape(4, 2)
    assert d[0].tolist() == [2, 1] and d[1].tolist() == [2, 1] and np.isinf(d[3]).all()
    r = reuse([[s]], 4)
    assert r["reuse_next"] == 2 / 8 and r["median_reuse_distance"] == "inf"
    c = cold_cache([[s]], 4, 2)
    full = [row for row in c["sizes"] if row["slots"] >= 4]
    assert full and all(row["lru"] == 1 - 4 / 8 for row in full)  # cold misses only: 4 distinct of 8


def test_sequence_balance_loss_is_one_when_uniform():
    from bench.twin_shapes import seq_balance_loss

    logits = torch.zeros(2 * 8, 4)  # every expert equally likely; top-k picks the first ones
    v = seq_balance_loss((logits,), 2, 8, 2)
    assert torch.isclose(v, torch.tensor(1.0))


def test_the_per_layer_balance_loss_sees_what_transformers_loss_does_not():
    """Layer 0 sends every token to experts 0 and 1, layer 1 to experts 2 and 3: each layer uses half its
    experts. transformers' loss counts both layers' tokens together and finds the experts balanced; the
    per-layer loss finds each layer twice as concentrated as balanced."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    from bench.twin_shapes import balance_loss

    t, e, k = 16, 4, 2
    l0 = torch.full((t, e), -9.0)
    l0[:, :2] = 0.0
    l1 = torch.full((t, e), -9.0)
    l1[:, 2:] = 0.0
    blind = load_balancing_loss_func((l0, l1), e, k)  # balanced: k (its own scale)
    assert torch.isclose(blind, torch.tensor(float(k)), atol=1e-3)
    per_layer = balance_loss((l0, l1), 1, t, k)  # balanced: 1 per layer
    assert torch.isclose(per_layer, torch.tensor(4.0), atol=1e-3)
    uniform = torch.zeros(t, e)
    assert torch.isclose(balance_loss((uniform, uniform), 1, t, k), torch.tensor(2.0))


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "phi-mini-moe"])
def test_per_layer_aux_replaces_the_familys_own_loss(name):
    from bench.twin_shapes import BalanceAux, build_twin, inner_model, twin_shape

    shape = twin_shape(name, 4096, smoke=True)
    twin = build_twin(shape, torch.device("cpu"), 0)
    assert isinstance(twin, BalanceAux) and not twin.per_sequence
    ids = torch.randint(0, 4096, (2, 12))
    with torch.no_grad():
        lm = inner_model(twin)(input_ids=ids, labels=ids).loss
        out = twin(input_ids=ids, labels=ids, output_router_logits=True)
    assert out.aux_loss > 0
    assert torch.isclose(out.loss, lm + twin.config.router_aux_loss_coef * out.aux_loss, atol=1e-6)
    plain = build_twin(shape, torch.device("cpu"), 0, aux="transformers")
    assert not isinstance(plain, BalanceAux)
    with pytest.raises(ValueError, match="aux"):
        build_twin(shape, torch.device("cpu"), 0, aux="none")
    light = build_twin(shape, torch.device("cpu"), 0, aux_coef=1e-4)  # `train_twin --aux-coef`
    assert light.config.router_aux_loss_coef == 1e-4
    with torch.no_grad():
        out_light = light(input_ids=ids, labels=ids, output_router_logits=True)
    assert torch.isclose(out_light.loss, lm + 1e-4 * out_light.aux_loss, atol=1e-6)
    with pytest.raises(ValueError, match="aux_coef"):
        build_twin(shape, torch.device("cpu"), 0, aux_coef=-1.0)


def test_twin_data_folder_keeps_the_layout(tmp_path):
    from bench.lm_data import read_books
    from bench.twin_data import build

    src = write_data(tmp_path / "src")
    build(src, tmp_path / "dst", books=0.5)
    texts, _ = read_books(tmp_path / "dst" / "gutenberg" / "gutenberg_train.jsonl.gz")
    full, _ = read_books(src / "gutenberg" / "gutenberg_train.jsonl.gz")
    assert texts == full[:1]
    for rel in ("wikitext-2/test.txt", "mmlu/test/toy_test.csv", "mt_bench/question.jsonl"):
        assert (tmp_path / "dst" / rel).read_bytes() == (src / rel).read_bytes()
