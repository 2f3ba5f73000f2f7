"""The predictor's Triton kernel (`engine.kernels.fused_predictor`): BatchNorm folded into the first linear
(on the CPU, plain torch), and both predictor architectures' scores and top ids against the module's own
forward in Triton's interpreter (on a GPU, `bench/predictor_cost.py` times and checks it)."""

from __future__ import annotations

import pytest
import torch
from interpreted import needs_triton, run_interpreted
from torch import nn

from engine.kernels.fused_predictor import fold_batchnorm


def test_batchnorm_folds_into_the_linear_in_eval_mode():
    torch.manual_seed(0)
    lin, bn = nn.Linear(12, 6), nn.BatchNorm1d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(5, 12)
    w, b = fold_batchnorm(lin, bn)
    with torch.no_grad():
        torch.testing.assert_close(x @ w.T + b, bn(lin(x)), rtol=1e-5, atol=1e-5)


@needs_triton
def test_predictor_kernel_in_the_triton_interpreter(tmp_path):
    code = (
        "import torch\n"
        "from engine.prefetch.nets import build_predictor\n"
        "from engine.kernels.fused_predictor import PredictorKernels\n"
        "torch.manual_seed(0)\n"
        "for arch in (1, 2):\n"
        "    net = build_predictor(arch, 72, 20, hidden=40).eval()\n"
        "    if arch == 1:\n"
        "        net[1].running_mean.uniform_(-1, 1); net[1].running_var.uniform_(0.5, 2)\n"
        "    pk = PredictorKernels(net, block_n=16, block_k=32)  # edge blocks on every side\n"
        "    for rows in (3, 1, 19):  # one row block, then two (the last program ranks both)\n"
        "        x = torch.randn(rows, 72)\n"
        "        with torch.no_grad():\n"
        "            want = net(x)\n"
        "        for _ in range(2):  # the scratch and the counter are zero again after a launch\n"
        "            scores, ids = pk.run(x, 5)\n"
        "            torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)\n"
        "            ref = torch.topk(want, 5, dim=-1).indices\n"
        "            assert torch.equal(ids, ref), (ids, ref)\n"
        "            assert torch.equal(pk.top_ids(x, 5), ref)\n"
        "        assert all(not a.any() and int(c) == 0 for a, c in pk._scratches.values())\n"
        "# ties go to the lowest id\n"
        "net = build_predictor(2, 8, 6, hidden=4).eval()\n"
        "with torch.no_grad():\n"
        "    net[2].weight.zero_(); net[2].bias.copy_(torch.tensor([0., 1., 1., 0., 1., 0.]))\n"
        "pk = PredictorKernels(net)\n"
        "assert pk.top_ids(torch.randn(1, 8), 4).tolist() == [[1, 2, 4, 0]]\n"
        "assert pk.top_ids(torch.randn(2, 8), 6).tolist() == [[1, 2, 4, 0, 3, 5]] * 2\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)


def test_the_predictor_kernel_refuses_what_it_cannot_rank():
    pytest.importorskip("triton")
    from engine.kernels.fused_predictor import PredictorKernels
    from engine.prefetch.nets import build_predictor

    with pytest.raises(ValueError, match="at most 256 experts"):
        PredictorKernels(build_predictor(2, 8, 300, hidden=4).eval())
    pk = PredictorKernels(build_predictor(2, 8, 6, hidden=4).eval())
    with pytest.raises(ValueError, match="at most 16 ids"):
        pk.run(torch.randn(1, 8), 17)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", [1, 2])
def test_predictor_kernels_on_the_gpu_in_bf16(arch):
    """The Qwen3-30B-A3B shape's predictor (2048 -> 2048 -> 128) in bf16: scores within bf16 rounding of the
    module's, and the same top-8 sets on nearly every row (a near tie may swap the last id)."""
    from engine.kernels.fused_predictor import PredictorKernels
    from engine.prefetch.nets import build_predictor

    torch.manual_seed(0)
    net = build_predictor(arch, 2048, 128, hidden=2048).eval()
    if arch == 1:
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net = net.cuda().to(torch.bfloat16)
    pk = PredictorKernels(net)
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        want = net(x).float()
    ref = torch.topk(want, 8, dim=-1).indices.sort(-1).values
    for _ in range(3):  # repeated launches: the scratch is zeroed by each one's last program
        got, ids = pk.run(x, 8)
        assert (got - want).abs().max() <= 0.05 * want.abs().max()
        assert (ids.sort(-1).values == ref).all(-1).float().mean() >= 0.9
    same = 0
    for r in range(x.shape[0]):  # a decode step's single row, as the tap runs it
        one, ids1 = pk.run(x[r : r + 1], 8)
        assert (one[0] - want[r]).abs().max() <= 0.05 * want.abs().max()
        assert torch.equal(pk.top_ids(x[r : r + 1], 8), ids1)  # the ids-only launch ranks the same
        same += int(torch.equal(ids1[0].sort().values, ref[r]))
    assert same >= 0.9 * x.shape[0]
    assert all(not a.any() and int(c) == 0 for a, c in pk._scratches.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predictor_kernel_launches_on_two_streams_at_once():
    """One predictor launched on two streams with no ordering between them (an eager step's prefetch on the
    prefetcher's side stream beside a graph's branch): each stream has its own scratch and counter, so
    neither launch sees the other's partial logits."""
    from engine.kernels.fused_predictor import PredictorKernels
    from engine.prefetch.nets import build_predictor

    torch.manual_seed(0)
    net = build_predictor(2, 2048, 128, hidden=2048).eval().cuda().to(torch.bfloat16)
    pk = PredictorKernels(net)
    xa, xb = (torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    want_a, want_b = pk.scores(xa).clone(), pk.scores(xb).clone()
    sa, sb = torch.cuda.Stream(), torch.cuda.Stream()
    sa.wait_stream(torch.cuda.current_stream())
    sb.wait_stream(torch.cuda.current_stream())
    got_a, got_b = [], []
    for _ in range(200):
        with torch.cuda.stream(sa):
            got_a.append(pk.scores(xa))
        with torch.cuda.stream(sb):
            got_b.append(pk.scores(xb))
    torch.cuda.synchronize()
    tol = 0.02 * want_a.abs().max()
    assert max(float((g - want_a).abs().max()) for g in got_a) <= tol
    assert max(float((g - want_b).abs().max()) for g in got_b) <= tol
    assert len(pk._scratches) == 3  # the default stream's and one per side stream
    assert all(not a.any() and int(c) == 0 for a, c in pk._scratches.values())
