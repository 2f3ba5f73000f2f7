"""`predictors.lookahead.LookaheadTraces`: layer i's inputs paired with layer i + d's routing, trainable as is."""

from __future__ import annotations

import json

import pytest
import torch
from predictor_fixtures import write_synthetic_traces
from typer.testing import CliRunner

from engine.prefetch.bundle import distance, load_bundle
from predictors.cli import app
from predictors.lookahead import LookaheadTraces
from predictors.traces import TraceSet
from predictors.train import train_bank


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> TraceSet:
    return TraceSet(
        write_synthetic_traces(tmp_path_factory.mktemp("la") / "t", n_prompts=30, tokens=10, layers=4)
    )


def test_layer_i_pairs_its_inputs_with_the_targets_d_layers_later(traces):
    la = LookaheadTraces(traces, 2)
    assert la.num_layers == 2 and la.layer_ids == traces.layer_ids[2:]
    for i in range(la.num_layers):
        got, src, dst = la.layer(i), traces.layer(i), traces.layer(i + 2)
        assert torch.equal(got.x, src.x)
        assert torch.equal(got.topk, dst.topk) and torch.equal(got.scores, dst.scores)
    held = la.split(0.2, 0)[1]
    assert torch.equal(la.layer(1, held).topk, traces.layer(3, held).topk)
    assert la.summary()["lookahead_distance"] == 2
    with pytest.raises(IndexError):
        la.layer(2)


def test_distance_zero_is_the_trace_set_and_too_far_is_refused(traces):
    la = LookaheadTraces(traces, 0)
    assert la.num_layers == traces.num_layers
    assert torch.equal(la.layer(3).topk, traces.layer(3).topk)
    with pytest.raises(ValueError, match="distances 0..3"):
        LookaheadTraces(traces, 4)


def test_train_bank_trains_one_predictor_per_source_layer(traces):
    bank, report = train_bank(
        LookaheadTraces(traces, 1), 2, "wbce", hidden=8, epochs=1, device="cpu", progress=False
    )
    assert len(bank.layers) == 3 and len(report["layers"]) == 3
    assert report["data"]["lookahead_distance"] == 1


def test_train_cli_writes_a_lookahead_bundle(traces, tmp_path):
    out = tmp_path / "bundle"
    args = ["train", "--traces", str(traces.dir), "--out", str(out), "--arch", "2", "--loss", "wbce"]
    args += ["--hidden", "8", "--epochs", "1", "--distance", "1", "--no-progress"]
    res = CliRunner().invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "3 layers, 1 MoE layers ahead" in res.output
    bank, manifest = load_bundle(out)
    assert distance(manifest) == 1 and len(bank) == manifest["num_moe_layers"] == 3
    assert manifest["layer_ids"] == traces.layer_ids[1:]  # the layers the predictors name experts of
    assert json.loads((out / "manifest.json").read_text())["data"]["lookahead_distance"] == 1
    far = CliRunner().invoke(app, [*args[:-3], "--distance", "4", "--no-progress"], terminal_width=200)
    assert far.exit_code != 0 and "0 to 3" in far.output
    assert distance({}) == 0  # bundles written before --distance predict their own layer
