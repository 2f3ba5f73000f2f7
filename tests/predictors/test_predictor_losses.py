"""Each loss against values computed by hand (math module, explicit numbers) on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from predictors.losses import (
    LOSSES,
    focal_loss,
    loss_constants,
    mse_loss,
    pairwise_margin_loss,
    ranking_bce_loss,
    weighted_bce_loss,
)


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_mse_is_mean_over_samples_of_summed_squares():
    z = torch.tensor([[0.5, 0.2], [0.0, 1.0]])
    s = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    idx = torch.tensor([[0], [1]])
    expected = ((0.2**2 + 0.1**2) + (0.5**2 + 0.5**2)) / 2
    assert mse_loss(z, s, idx).item() == pytest.approx(expected)
    soft = [math.exp(0.5) / (math.exp(0.5) + math.exp(0.2)), math.exp(0.2) / (math.exp(0.5) + math.exp(0.2))]
    got = mse_loss(z[:1], s[:1], idx[:1], softmax=True).item()
    assert got == pytest.approx((soft[0] - 0.7) ** 2 + (soft[1] - 0.3) ** 2, rel=1e-5)


def test_weighted_bce_weights_by_affinity_rank_and_labels_from_topk():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.tensor([[0.2, 0.5, 0.3]])  # affinity ranks: expert 1, then 2, then 0
    idx = torch.tensor([[0]])  # the router picked expert 0 (labels do not follow the affinity)
    # top_n = 1: weight 3 for expert 1 only.
    terms = [0.5 * math.log(sig(2.0)), 3.0 * math.log(1 - sig(0.0)), 0.5 * math.log(1 - sig(-1.0))]
    assert weighted_bce_loss(z, s, idx, top_n=1).item() == pytest.approx(-sum(terms) / 3, rel=1e-6)
    # Paper default (top 10): all three get weight 3.
    terms = [3.0 * math.log(sig(2.0)), 3.0 * math.log(1 - sig(0.0)), 3.0 * math.log(1 - sig(-1.0))]
    assert weighted_bce_loss(z, s, idx).item() == pytest.approx(-sum(terms) / 3, rel=1e-6)


def test_pairwise_term_uses_only_valid_pairs_and_averages_them():
    z = torch.tensor([[0.05, 0.0, 0.2]])
    # Strict order 0 > 1 > 2: pairs (0,1) (0,2) (1,2): ReLU(0.1 - 0.05), ReLU(0.1 + 0.15), ReLU(0.1 + 0.2).
    s = torch.tensor([[0.5, 0.3, 0.2]])
    assert pairwise_margin_loss(z, s).item() == pytest.approx((0.05 + 0.25 + 0.3) / 3, rel=1e-5)
    # A tie between experts 0 and 1 gives no pair: only (0,2) and (1,2).
    s_tie = torch.tensor([[0.4, 0.4, 0.2]])
    assert pairwise_margin_loss(z, s_tie).item() == pytest.approx((0.25 + 0.3) / 2, rel=1e-5)
    # Only the true top-n enter: with n = 2, expert 2 (rank 3) is out, one pair (0,1) is left.
    assert pairwise_margin_loss(z, s, top_n=2).item() == pytest.approx(0.05, rel=1e-5)
    # Pairs already separated by more than the margin cost nothing.
    assert pairwise_margin_loss(torch.tensor([[3.0, 2.0, 1.0]]), s).item() == 0.0
    # No valid pair at all: zero, not NaN.
    assert pairwise_margin_loss(z, torch.full((1, 3), 1 / 3)).item() == 0.0


def test_pairwise_term_normalises_by_pair_count_across_the_batch():
    z = torch.tensor([[0.05, 0.0, 0.2], [0.0, 0.0, 0.0]])
    s = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])  # 3 valid pairs + 2 valid pairs
    expected = ((0.05 + 0.25 + 0.3) + (0.1 + 0.1)) / 5
    assert pairwise_margin_loss(z, s).item() == pytest.approx(expected, rel=1e-5)


def test_ranking_bce_tiers_plus_lambda_pairwise():
    z = torch.tensor([[0.05, 0.0, 0.2]])
    s = torch.tensor([[0.5, 0.3, 0.2]])
    idx = torch.tensor([[0]])
    # top_n 1 / mid_n 2: weights 3.0, 1.5, 0.5 by affinity rank; the pair window is the top 1: no pair.
    terms = [3.0 * math.log(sig(0.05)), 1.5 * math.log(1 - sig(0.0)), 0.5 * math.log(1 - sig(0.2))]
    got = ranking_bce_loss(z, s, idx, top_n=1, mid_n=2).item()
    assert got == pytest.approx(-sum(terms) / 3, rel=1e-6)
    # Paper defaults: every expert is in the top 10 (weight 3) and all three pairs enter with lambda 0.3.
    terms = [3.0 * math.log(sig(0.05)), 3.0 * math.log(1 - sig(0.0)), 3.0 * math.log(1 - sig(0.2))]
    expected = -sum(terms) / 3 + 0.3 * (0.05 + 0.25 + 0.3) / 3
    assert ranking_bce_loss(z, s, idx).item() == pytest.approx(expected, rel=1e-5)
    assert ranking_bce_loss(z, s, idx, lam=0.0).item() == pytest.approx(-sum(terms) / 3, rel=1e-6)


def test_focal_loss_by_hand():
    z = torch.tensor([[0.0, 2.0]])
    s = torch.tensor([[0.6, 0.4]])
    idx = torch.tensor([[0]])
    pos = -0.25 * (1 - 0.5) ** 2 * math.log(0.5)
    neg = -0.75 * (1 - (1 - sig(2.0))) ** 2 * math.log(1 - sig(2.0))
    assert focal_loss(z, s, idx).item() == pytest.approx((pos + neg) / 2, rel=1e-5)
    no_alpha = (-(0.5**2) * math.log(0.5) - sig(2.0) ** 2 * math.log(1 - sig(2.0))) / 2
    assert focal_loss(z, s, idx, alpha=None).item() == pytest.approx(no_alpha, rel=1e-5)


def test_registry_and_constants():
    assert set(LOSSES) == {"mse", "wbce", "rank_bce", "focal"}
    consts = loss_constants("rank_bce", {"lam": "0.5", "top_n": "5"})
    assert (
        consts["lam"] == 0.5 and consts["top_n"] == 5 and consts["margin"] == 0.1 and consts["w_mid"] == 1.5
    )
    assert loss_constants("wbce") == {"w_top": 3.0, "w_rest": 0.5, "top_n": 10}
    with pytest.raises(ValueError, match="no constant"):
        loss_constants("wbce", {"lam": 1})
    with pytest.raises(ValueError, match="unknown loss"):
        loss_constants("hinge")


def test_losses_give_gradients():
    z = torch.randn(4, 8, requires_grad=True)
    s = torch.randn(4, 8).softmax(-1)
    idx = s.topk(2, dim=1).indices
    for fn in LOSSES.values():
        z.grad = None
        fn(z, s, idx).backward()
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
