"""The predictor's Triton kernels (`engine.kernels.fused_predictor`): BatchNorm folded into the first linear
(on the CPU, plain torch), and both predictor architectures' scores and top ids against the module's own
forward in Triton's interpreter (on a GPU, `bench/predictor_cost.py` times and checks them)."""

from __future__ import annotations

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
def test_predictor_kernels_in_the_triton_interpreter(tmp_path):
    code = (
        "import torch\n"
        "from engine.prefetch.nets import build_predictor\n"
        "from engine.kernels.fused_predictor import PredictorKernels\n"
        "torch.manual_seed(0)\n"
        "for arch in (1, 2):\n"
        "    net = build_predictor(arch, 72, 20, hidden=40).eval()\n"
        "    if arch == 1:\n"
        "        net[1].running_mean.uniform_(-1, 1); net[1].running_var.uniform_(0.5, 2)\n"
        "    pk = PredictorKernels(net, block_n=16, block_k=32)  # edge blocks on both sides\n"
        "    x = torch.randn(3, 72)\n"
        "    with torch.no_grad():\n"
        "        want = net(x)\n"
        "    torch.testing.assert_close(pk.scores(x, block_e=8), want, rtol=1e-4, atol=1e-4)\n"
        "    ref = torch.topk(want, 5, dim=-1).indices\n"
        "    assert torch.equal(pk.top_ids(x, 5), ref), (pk.top_ids(x, 5), ref)\n"
        "    assert torch.equal(pk.top_ids(x, 5, fused=True), ref), (pk.top_ids(x, 5, fused=True), ref)\n"
        "# ties go to the lowest id, in the fused top-k\n"
        "net = build_predictor(2, 8, 6, hidden=4).eval()\n"
        "with torch.no_grad():\n"
        "    net[2].weight.zero_(); net[2].bias.copy_(torch.tensor([0., 1., 1., 0., 1., 0.]))\n"
        "pk = PredictorKernels(net, block_n=16, block_k=32)\n"
        "assert pk.top_ids(torch.randn(1, 8), 4, fused=True).tolist() == [[1, 2, 4, 0]]\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)
