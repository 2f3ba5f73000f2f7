"""`engine.prefetch.kernel_bank` (MOE_PREDICTOR_KERNEL): where the bank is wrapped, and what the wrapped bank
answers, decode steps through the kernel (in Triton's interpreter) and prefills through torch."""

from __future__ import annotations

import torch
from interpreted import needs_triton, run_interpreted

from engine.api.config import EngineConfig
from engine.prefetch.kernel_bank import kernel_bank
from engine.prefetch.nets import PredictorBank


def test_the_bank_stays_torch_where_the_kernel_cannot_run():
    bank = PredictorBank(2, 16, 8, 3, hidden=16).eval()
    assert kernel_bank(bank, torch.device("cpu"), True) is bank  # a CPU bank
    assert kernel_bank(bank, torch.device("cpu"), False) is bank
    wrapped = object()  # a bank wrapped already (the benchmark's replayed bank) is left alone
    assert kernel_bank(wrapped, torch.device("cuda"), True) is wrapped


def test_the_setting_is_off_by_default_and_read_from_the_environment(monkeypatch):
    from moe_prefetch.settings import load_settings

    assert EngineConfig().predictor_kernel is False
    monkeypatch.setenv("MOE_PREDICTOR_KERNEL", "1")
    assert load_settings().engine_config().predictor_kernel is True


@needs_triton
def test_decode_steps_run_the_kernel_and_prefills_torch(tmp_path):
    code = (
        "import torch\n"
        "from engine.prefetch.kernel_bank import KernelBank, MAX_ROWS\n"
        "from engine.prefetch.nets import PredictorBank\n"
        "torch.manual_seed(0)\n"
        "bank = PredictorBank(1, 40, 12, 3, hidden=24).eval()\n"
        "for p in bank.layers:\n"
        "    p[1].running_mean.uniform_(-1, 1); p[1].running_var.uniform_(0.5, 2)\n"
        "kb = KernelBank(bank)\n"
        "assert len(kb) == 3\n"
        "calls = []\n"
        "for k in kb.kernels:\n"
        "    k.scores = (lambda f: lambda x: calls.append(x.shape[0]) or f(x))(k.scores)\n"
        "for rows in (1, MAX_ROWS, MAX_ROWS + 1):\n"
        "    x = torch.randn(rows, 40)\n"
        "    for i in range(3):\n"
        "        with torch.no_grad():\n"
        "            want = bank.forward_layer(i, x)\n"
        "        torch.testing.assert_close(kb.forward_layer(i, x).float(), want, rtol=1e-4, atol=1e-4)\n"
        "assert calls == [1] * 3 + [MAX_ROWS] * 3, calls  # the prefill of 17 rows went to torch\n"
        "print('ok')\n"
    )
    run_interpreted(tmp_path, code, timeout=300)


def test_top_k_policies_take_the_rankers_ids_and_the_others_rank_scores():
    """The prefetcher's fast path (`ranker`): a top-k policy takes its ids as given, falls back to ranking
    the scores where the ranker gives none (a prefill), and `adaptive` (which needs the mass) always ranks."""
    from types import SimpleNamespace

    from engine.prefetch.policies import build_policy
    from engine.prefetch.prefetcher import Prefetcher

    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    given = torch.tensor([[0, 2]])
    asked = []

    def ranker(index, x, m):
        asked.append((index, m))
        return given if x.shape[0] == 1 else None

    cache = SimpleNamespace(cuda=False, device=torch.device("cpu"))
    exact = build_policy("exact", 2, 4)
    pf = Prefetcher([], cache, exact, lambda i, x: scores.expand(x.shape[0], -1), ranker=ranker)
    assert torch.equal(pf._select(3, torch.zeros(1, 8)), given)
    assert pf._select(3, torch.zeros(2, 8)).tolist() == [[1, 3], [1, 3]]  # no ids given: topk of the scores
    assert asked == [(3, 2), (3, 2)]
    adaptive = build_policy("adaptive", 2, 4)
    pf = Prefetcher([], cache, adaptive, lambda i, x: scores, ranker=ranker)
    assert pf.ranker is None and pf._select(0, torch.zeros(1, 8))[0, :2].tolist() == [1, 3]
