"""Training on a planted linear-ranking signal, the by-prompt split, bundle round-trip and mismatch."""

from __future__ import annotations

import pytest
import torch
from predictor_fixtures import write_synthetic_traces

from engine.api.errors import BundleMismatch
from engine.prefetch.bundle import load_bundle
from predictors.bundle import bundle_manifest, save_bundle
from predictors.traces import TraceSet, split_by_prompt
from predictors.train import train_bank, warmup_cosine


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return TraceSet(write_synthetic_traces(tmp_path_factory.mktemp("syn"), n_prompts=500, tokens=20))


@pytest.fixture(scope="module")
def trained(synthetic):
    return train_bank(
        synthetic,
        2,
        "wbce",
        hidden=64,
        epochs=20,
        batch_size=128,
        lr=3e-3,
        patience=4,
        device="cpu",
        progress=False,
    )


def test_trace_set_reads_what_was_written(synthetic):
    assert synthetic.samples == 10000 and len(synthetic.manifest["shards"]) == 10
    layer = synthetic.layer(1)
    assert layer.x.shape == (10000, 16) and layer.x.dtype == torch.bfloat16
    assert layer.scores.shape == (10000, 8) and layer.topk.shape == (10000, 2)
    same = layer.scores.topk(2, dim=1).indices.sort(1).values == layer.topk.sort(1).values
    assert same.all(1).float().mean() > 0.99  # scores are stored in fp16: rare near-ties may flip
    assert synthetic.prompt_ids().unique().numel() == 500


def test_split_is_by_prompt():
    pid = torch.arange(100).repeat_interleave(7)
    train, held = split_by_prompt(pid, 0.2, seed=3)
    assert (train ^ held).all()
    assert set(pid[train].tolist()).isdisjoint(pid[held].tolist())
    assert pid[held].unique().numel() == 20
    assert torch.equal(held, split_by_prompt(pid, 0.2, seed=3)[1])
    assert not torch.equal(held, split_by_prompt(pid, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="at least 2 prompts"):
        split_by_prompt(torch.zeros(5, dtype=torch.long), 0.5, seed=0)


def test_schedule_warms_up_then_decays_to_zero():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_planted_linear_ranking_is_learned(trained):
    bank, report = trained
    for layer in report["layers"]:
        assert layer["recall_at_k"] > 0.95, layer
        assert layer["best_epoch"] >= 1 and len(layer["history"]) == layer["epochs_run"]
    assert report["data"]["heldout_prompts"] == 50 and report["data"]["train_prompts"] == 450
    assert bank.expert_counts.sum(1).tolist() == [2 * report["data"]["train_samples"]] * 2


def test_planted_signal_arch1_ranking_bce(synthetic):
    _, report = train_bank(
        synthetic,
        1,
        "rank_bce",
        hidden=64,
        epochs=20,
        batch_size=128,
        lr=3e-3,
        patience=4,
        device="cpu",
        progress=False,
    )
    assert all(layer["recall_at_k"] > 0.95 for layer in report["layers"]), report["heldout_mean"]


@pytest.mark.parametrize("loss", ["rank_bce", "mse", "focal"])
def test_every_loss_trains_and_records_its_constants(synthetic, loss):
    _, report = train_bank(
        synthetic, 1, loss, hidden=32, epochs=2, batch_size=256, lr=3e-3, device="cpu", progress=False
    )
    assert report["heldout_mean"]["recall_at_k"] > 0.5  # chance is 2/8
    assert report["config"]["loss_consts"] == (
        {"w_top": 3.0, "w_mid": 1.5, "w_rest": 0.5, "top_n": 10, "mid_n": 30, "lam": 0.3, "margin": 0.1}
        if loss == "rank_bce"
        else {"softmax": False}
        if loss == "mse"
        else {"gamma": 2.0, "alpha": 0.25}
    )


def test_bundle_round_trip_and_mismatch(tmp_path, synthetic, trained):
    bank, report = trained
    save_bundle(tmp_path / "b", bank, bundle_manifest(synthetic.manifest, report))
    loaded, manifest = load_bundle(tmp_path / "b", expected_fingerprint="synthetic-0")
    assert manifest["arch"] == 2 and manifest["loss"] == "wbce" and manifest["hidden"] == 64
    assert manifest["layers"][0]["recall_at_k"] == report["layers"][0]["recall_at_k"]
    x = torch.randn(7, 16)
    for i in range(2):
        assert torch.equal(loaded.forward_layer(i, x), bank.forward_layer(i, x))
    assert torch.equal(loaded.expert_counts, bank.expert_counts)
    with pytest.raises(BundleMismatch) as err:
        load_bundle(tmp_path / "b", expected_fingerprint="abc123")
    msg = str(err.value)
    assert "synthetic-0" in msg and "abc123" in msg and str(tmp_path / "b") in msg
    with pytest.raises(FileNotFoundError, match="not a predictor bundle"):
        load_bundle(tmp_path)
