"""CUDA paths of train and evaluate (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from predictor_fixtures import write_synthetic_traces

from predictors.evaluate import evaluate
from predictors.traces import TraceSet
from predictors.train import train_bank

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_train_and_evaluate_on_cuda(tmp_path):
    traces = TraceSet(write_synthetic_traces(tmp_path, n_prompts=500))
    bank, report = train_bank(
        traces, 1, "rank_bce", hidden=64, epochs=20, batch_size=128, lr=3e-3, patience=4, progress=False
    )  # device defaults to cuda
    assert report["config"]["device"] == "cuda"
    assert all(layer["recall_at_k"] > 0.95 for layer in report["layers"])
    manifest = {
        "fingerprint": traces.fingerprint,
        "arch": 1,
        "loss": "rank_bce",
        "training": {"holdout_frac": 0.1},
    }
    result = evaluate(bank, manifest, traces, latency_iters=50)
    assert result["device"].startswith("cuda") and result["overall"]["predictor"]["recall_at_k"] > 0.95
    assert 0 < result["overall"]["predictor"]["latency_ms_median"] < 5
