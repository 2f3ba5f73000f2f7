"""`bench/hybrid_layer.py` on the CPU (toy expert shape): every split of a layer's misses between the host
and the device gives the layer's output, and the run writes a row per miss count with every split timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.hybrid_layer import Layer, Rotor, build_store, expert_module  # noqa: E402


def test_every_split_gives_the_same_output():
    store = build_store(8, 64, 32, torch.float32, pin=False)
    layer = Layer(store, torch.device("cpu"), 4, expert_module())
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    ids = [5, 1, 6, 2]
    views = store.layout.views(store.buffers[0])
    want = torch.zeros(1, 64)
    for e in ids:  # the reference: each expert's gated SiLU MLP from the store, summed
        gu = x @ views["gate_up_proj"][e].T
        g, u = gu.chunk(2, dim=-1)
        want += (torch.nn.functional.silu(g) * u) @ views["down_proj"][e].T
    for m in range(len(ids) + 1):
        assert torch.allclose(layer.run(x, ids, m), want, rtol=1e-5, atol=1e-6), m


def test_rotor_cycles_through_the_store():
    r = Rotor(5)
    assert [r.take(2), r.take(2), r.take(2)] == [[0, 1], [2, 3], [4, 0]]


def test_smoke_run_writes_a_row_per_miss_count(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "hybrid_layer.py"), "--smoke", "--device", "cpu",
           "--misses", "1,3", "--reps", "3", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "hybrid_layer.json").read_text())
    assert doc["kind"] == "hybrid_layer" and doc["batch"] == 1 and doc["device"] == "cpu"
    assert doc["rates"]["copy_ms"] > 0 and doc["rates"]["host_ms"] > 0
    assert [r["misses"] for r in doc["rows"]] == [1, 3]
    for r in doc["rows"]:
        ms = r["ms_by_host_experts"]
        assert len(ms) == r["misses"] + 1 and all(v > 0 for v in ms)
        assert ms[r["best_host_experts"]] == min(ms)
        assert r["speedup_best"] == pytest.approx(ms[0] / min(ms), rel=1e-2)
        assert 0 <= r["model_host_experts"] <= r["misses"]
    assert (tmp_path / "hybrid_layer.png").stat().st_size > 10_000
