"""`bench/predictor_cost.py` on the CPU's toy shape (torch only; the Triton kernels run on a GPU): a row per
architecture, width, batch and policy, each with its time and its bytes, and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_predictor_cost_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "predictor_cost.py"), "--smoke", "--device", "cpu",
           "--reps", "2", "--runs", "1", "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "predictor_cost.json").read_text())
    rows = data["rows"]
    keys = {(r["arch"], r["hidden"], r["rows"], r["policy"]) for r in rows}
    assert keys == {
        (a, h, t, p) for a in (2, 1) for h in (32, 16) for t in (1, 8) for p in ("exact", "overprovision")
    }
    for r in rows:
        assert r["impl"] == "torch" and r["us_per_layer"] > 0 and r["same_ids_as_torch"] == 1.0
        assert r["ids"] == (data["top_k"] if r["policy"] == "exact" else data["k_prime"])
        # Linear(d, H) + Linear(H, E) (+ BatchNorm's weight and bias for arch 1), float32 on the CPU
        d, e, h = data["d_model"], data["experts"], r["hidden"]
        assert r["layer_bytes"] == 4 * (d * h + h + h * e + e + (2 * h if r["arch"] == 1 else 0))
    assert (tmp_path / "predictor_cost.png").stat().st_size > 0


def test_implementation_names_parse_into_kernel_variants():
    sys.path.insert(0, str(ROOT))
    from bench.predictor_cost import split_impl

    assert split_impl("torch") == ("torch", "", {})
    assert split_impl("kernel") == ("kernel", "", {})
    assert split_impl("kernel@512/4") == ("kernel", "@512/4", {"block_k": 512, "num_warps": 4})
    assert split_impl("kernel@256/8/32") == (
        "kernel", "@256/8/32", {"block_k": 256, "num_warps": 8, "block_n": 32}
    )  # fmt: skip
    # the same variant for the ids-only and the scores launch: one set of kernels serves both
    assert split_impl("kernel+topk@128/2")[1:] == split_impl("kernel@128/2")[1:]
