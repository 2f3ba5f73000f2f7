"""`bench/decode.py --smoke` end to end on the CPU: a shrunken Qwen3-shaped model, predictors trained on
its own traces, every configuration asked for, the batched throughput runs and the prefill, written to
JSON and a PNG; every configuration gives the same greedy tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MMLU = ROOT.parent / "shared" / "data" / "mmlu" / "test"


@pytest.mark.skipif(not MMLU.is_dir(), reason=f"MMLU data not found at {MMLU}")
def test_decode_bench_smoke_run(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "bench" / "decode.py"), "--smoke", "--prompts", str(MMLU),
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--runs", "2", "--new-tokens", "4",
        "--collect-prompts", "10", "--samples", "500", "--epochs", "1",
        "--policies", "none,exact,oracle,oracle+1", "--fractions", "1.0,0.5", "--batches", "2,4", "--eviction", "lfu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "decode_qwen3_30b_a3b_smoke.json").read_text())
    assert (tmp_path / "out" / "decode_qwen3_30b_a3b_smoke.png").stat().st_size > 0
    seen = {(c["policy"], c["fraction"]) for c in out["configs"]}
    assert seen == {("none", 1.0), ("none", 0.5), ("exact", 0.5), ("oracle", 0.5), ("oracle+1", 0.5)}
    assert all(c["summary"]["same_tokens_as_reference"] for c in out["configs"])
    assert out["eviction"] == "lfu"
    assert out["gc_freeze"]["frozen"] > 0  # the heap frozen before the measurements, as a server does
    assert all(len(c["summary"]["gc_by_run"]) == 2 for c in out["configs"])  # each run's collector passes
    steps = [c["steps"] for c in out["configs"]]  # on the CPU every step is eager
    assert all(s["eager"] > 0 and s["graph"] == 0 for s in steps)
    oracle = next(c["summary"] for c in out["configs"] if c["policy"] == "oracle")
    assert oracle["online_recall"] == 1.0  # it replays the routing `none` recorded at the same cache size
    ahead = next(c["summary"] for c in out["configs"] if c["policy"] == "oracle+1")
    assert ahead["online_recall"] == 1.0 and "1 MoE layers ahead" in out["predictions_by_policy"]["oracle+1"]
    for fraction in ("1.0", "0.5"):
        runs = out["batched"]["engine"][fraction]
        assert set(runs) == {"2", "4"} and all(r["tok_s_median"] > 0 for r in runs.values())
        assert all(0 < r["hit_rate"] <= 1 and r["streamed"] is False for r in runs.values())  # CPU: eager
    assert set(out["batched"]["engine_segmented"]) == {"0.5"}  # both kinds of step at 50%
    half = next(c["summary"] for c in out["configs"] if c["policy"] == "none" and c["fraction"] == 0.5)
    assert half["misses_per_token"] > 0 and half["demand_bytes_per_token"] > 0  # CPU: demand loads
    assert half["host_read_bytes_per_token"] == 0 == half["fill_bytes_per_token"]
    assert out["prefill"]["tok_s_median"] > 0 and "ratios" in out
