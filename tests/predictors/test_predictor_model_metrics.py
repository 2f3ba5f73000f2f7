"""Architectures' shapes and layers; metrics on hand-made cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.prefetch.nets import PredictorBank, build_predictor
from predictors.metrics import (
    default_k_prime,
    overprovision_recall,
    recall_at_k,
    set_accuracy,
    top1_accuracy,
)


@pytest.mark.parametrize("arch", [1, 2])
def test_predictor_shapes(arch):
    p = build_predictor(arch, d_model=48, num_experts=12, hidden=32)
    assert p(torch.randn(5, 48)).shape == (5, 12)
    assert p[0].in_features == 48 and p[0].out_features == 32 and p[-1].out_features == 12


def test_default_hidden_is_2048_and_layer_types():
    p1 = build_predictor(1, 64, 8)
    assert [type(m) for m in p1] == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]
    assert p1[0].out_features == 2048 and p1[3].p == 0.1
    p2 = build_predictor(2, 64, 8)
    assert [type(m) for m in p2] == [nn.Linear, nn.SiLU, nn.Linear] and p2[0].out_features == 2048
    with pytest.raises(ValueError, match="architecture"):
        build_predictor(3, 64, 8)


@pytest.mark.parametrize("arch", [1, 2])
def test_bank_forward_layer(arch):
    bank = PredictorBank(arch, d_model=16, num_experts=6, num_layers=3, hidden=8).eval()
    assert len(bank) == 3 and bank.expert_counts.shape == (3, 6)
    out = bank.forward_layer(2, torch.randn(1, 16, dtype=torch.bfloat16))  # batch 1, other dtype
    assert out.shape == (1, 6) and out.dtype == torch.float32
    assert bank.forward_layer(0, torch.randn(2, 3, 16)).shape == (6, 6)  # [B, T, d] is flattened


def test_metrics_hand_made():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0]])
    true = torch.tensor([[1, 0], [2, 3]])
    assert set_accuracy(scores, true) == pytest.approx(0.5)  # row 0 exact, row 1 {1,2} != {2,3}
    assert recall_at_k(scores, true) == pytest.approx(0.75)  # 2/2 and 1/2
    assert top1_accuracy(scores, true) == pytest.approx(0.5)  # 0 in {0,1}; 1 not in {2,3}
    assert overprovision_recall(scores, true, 3) == pytest.approx(0.75)  # row 1: {1,2,0} holds only 2
    assert overprovision_recall(scores, true, 4) == pytest.approx(1.0)
    assert overprovision_recall(scores, true, 10) == pytest.approx(1.0)  # capped at E


def test_default_k_prime():
    assert default_k_prime(6, 64) == 9
    assert default_k_prime(8, 128) == 12
    assert default_k_prime(2, 16) == 3
    assert default_k_prime(2, 2) == 2
