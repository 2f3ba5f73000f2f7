"""Evaluation baselines on a synthetic trace set, and the CLI end to end on tiny checkpoints with MMLU prompts."""

from __future__ import annotations

import json

import pytest
import torch
from predictor_fixtures import write_synthetic_traces
from typer.testing import CliRunner

from engine.api.errors import BundleMismatch
from engine.prefetch.bundle import load_bundle
from engine.prefetch.nets import PredictorBank
from predictors.cli import app
from predictors.evaluate import evaluate, plot_result, result_table
from predictors.traces import TraceSet


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return TraceSet(write_synthetic_traces(tmp_path_factory.mktemp("syn-eval"), n_prompts=40, layers=3))


def test_baselines_on_synthetic_routing(synthetic, tmp_path):
    bank = PredictorBank(2, d_model=16, num_experts=8, num_layers=3, hidden=8)
    bank.expert_counts[:] = torch.arange(8.0)  # the prior always says experts 7 and 6
    manifest = {
        "fingerprint": "synthetic-0",
        "arch": 2,
        "loss": "wbce",
        "training": {"holdout_frac": 0.25, "seed": 0},
    }
    result = evaluate(bank, manifest, synthetic, latency_iters=5)
    assert (
        result["samples_per_layer"] == 10 * 20
        and result["k_prime"] == 3
        and result["sweep"] == [2, 3, 4, 5, 6]
    )
    layer0, layer2 = result["layers"][0], result["layers"][2]
    # The synthetic router is exactly softmax(3 W x): the router baseline on x is perfect.
    assert layer0["router"]["recall_at_k"] == 1.0 and layer0["router"]["set_accuracy"] == 1.0
    assert layer0["crosslayer"] is None and layer2["crosslayer"] is not None
    assert result["overall"]["crosslayer"]["layers_averaged"] == 2
    data = synthetic.layer(2, synthetic.split(0.25, 0)[1])
    hits = (data.topk[:, :, None] == torch.tensor([7, 6])).any(-1).float().mean().item()
    assert layer2["prior"]["recall_at_k"] == pytest.approx(hits)
    assert layer2["predictor"]["latency_ms"] > 0 and result["overall"]["predictor"]["latency_ms_median"] > 0
    assert result["overall"]["router"]["recall_sweep"]["6"] == 1.0
    assert len(evaluate(bank, manifest, synthetic, split="all", latency_iters=2)["layers"]) == 3
    assert result_table(result).row_count == 4
    assert plot_result(result, tmp_path / "p.png").stat().st_size > 10_000
    with pytest.raises(BundleMismatch, match="synthetic-0"):
        evaluate(bank, {**manifest, "fingerprint": "other"}, synthetic)


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)
    if result.exit_code != 0:
        raise AssertionError(f"{args[0]} failed ({result.exit_code}):\n{result.output}") from result.exception
    return result.output


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_cli_end_to_end(family, request, tmp_path, mmlu_csv):
    ckpt = request.getfixturevalue("qwen3_ckpt" if family == "qwen3_moe" else "deepseek_ckpt")
    traces, bundle = tmp_path / "traces", tmp_path / "bundle"
    out = _run(
        "collect",
        "--model",
        ckpt,
        "--prompts",
        mmlu_csv,
        "--out",
        traces,
        "--max-samples",
        700,
        "--max-prompt-tokens",
        48,
        "--shard-size",
        256,
        "--no-progress",
    )
    assert "700 samples" in out
    manifest = json.loads((traces / "manifest.json").read_text())
    assert manifest["layer_ids"] == (
        [1, 2] if family == "deepseek_v2" else [0, 1, 2]
    )  # DeepSeek: dense layer 0
    out = _run(
        "train",
        "--traces",
        traces,
        "--out",
        bundle,
        "--arch",
        2,
        "--loss",
        "wbce",
        "--hidden",
        32,
        "--epochs",
        3,
        "--batch-size",
        64,
        "--holdout-frac",
        0.2,
        "--loss-param",
        "w_top=2.5",
        "--no-progress",
    )
    assert "held-out mean" in out
    bank, bmanifest = load_bundle(bundle, expected_fingerprint=manifest["fingerprint"])
    assert len(bank) == len(manifest["layer_ids"]) and bmanifest["loss_consts"]["w_top"] == 2.5
    assert bmanifest["training"]["holdout_frac"] == 0.2 and bmanifest["data"]["samples"] == 700
    out = _run(
        "evaluate",
        "--predictors",
        bundle,
        "--traces",
        traces,
        "--json",
        tmp_path / "r.json",
        "--plot",
        tmp_path / "r.png",
        "--latency-iters",
        5,
    )
    assert "overall" in out and "r@2" in out and "cross-layer is undefined" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["layer_id"] for r in result["layers"]] == manifest["layer_ids"]
    assert result["layers"][0]["crosslayer"] is None
    for row in result["layers"]:
        assert 0.0 <= row["predictor"]["recall_at_k"] <= 1.0 and row["router"]["recall_at_k"] >= 0.0
        assert row["predictor"]["set_accuracy"] <= row["predictor"]["recall_at_k"]
        assert row["predictor"]["recall_at_k"] <= row["predictor"]["overprov_recall"]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    help_text = _run("collect", "--help")
    assert "--max-samples" in help_text and "--chat-template" in help_text


def test_cli_mismatch_is_a_clear_error(qwen3_ckpt, deepseek_ckpt, tmp_path, mmlu_csv):
    for name, ckpt in (("q", qwen3_ckpt), ("d", deepseek_ckpt)):
        _run(
            "collect",
            "--model",
            ckpt,
            "--prompts",
            mmlu_csv,
            "--out",
            tmp_path / name,
            "--max-samples",
            120,
            "--max-prompt-tokens",
            30,
            "--no-progress",
        )
    _run(
        "train",
        "--traces",
        tmp_path / "q",
        "--out",
        tmp_path / "bq",
        "--hidden",
        16,
        "--epochs",
        1,
        "--batch-size",
        32,
        "--no-progress",
    )
    result = CliRunner().invoke(
        app, ["evaluate", "--predictors", str(tmp_path / "bq"), "--traces", str(tmp_path / "d")]
    )
    assert result.exit_code != 0 and isinstance(result.exception, BundleMismatch)
    assert str(tmp_path / "bq") in str(result.exception) and "trace set" in str(result.exception)
