"""`bench/serve_soak.py` end to end on the CPU: a tiny checkpoint written to disk with a predictor bundle,
real `moe-prefetch serve` children at two cache sizes and with the `exact` policy, driven by the openai
SDK at two concurrency levels with disconnects and bad bodies, including the ones that used to kill the
engine (`--hostile`: out-of-vocabulary ids, ids past 2^63, temperature 1e-300, a lone surrogate), which
must all get a 4xx; JSON records and the PNG are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVEL_FIELDS = (
    "shape", "concurrency", "cache_fraction", "policy", "steps", "requests", "errors_5xx",
    "errors_connection", "lost_streams", "truncated_streams", "bad_requests_sent", "bad_requests_4xx",
    "greedy_compared", "greedy_equal", "tok_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99",
    "rss_mb_start", "rss_mb_end", "rss_mb_max", "gpu_mb_start", "gpu_mb_end", "gpu_mb_max",
    "metrics_consistent", "notes",
)  # fmt: skip

pytest.importorskip("openai")


@pytest.mark.slow
def test_serve_soak_smoke_run(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(ROOT / "bench" / "serve_soak.py"), "--shape", "tiny", "--device", "cpu",
        "--dtype", "float32", "--fractions", "1.0,0.5", "--policies", "none,exact", "--steps", "streamed",
        "--concurrency", "1,4", "--requests", "small", "--hostile", "--deadline", "240", "--eviction", "lfu",
        "--out", str(out), "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("MOE_")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    tail = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, tail
    assert "soak: 3 configurations, 0 errors" in res.stdout, tail

    data = json.loads((out / "serve_soak_tiny.json").read_text())
    assert (out / "serve_soak_tiny.png").stat().st_size > 0
    assert data["shape"] == "tiny" and data["float32"] is True and data["hostile"] is True
    assert data["eviction"] == "lfu"  # every server ran MOE_EVICTION=lfu
    assert [p["name"] for p in data["plan"]] == [
        "100%/none/streamed",
        "50%/none/streamed",
        "50%/exact/streamed",
    ]
    levels = [r for r in data["records"] if r["record"] == "level"]
    configs = [r for r in data["records"] if r["record"] == "config"]
    assert len(levels) == 6 and len(configs) == 3
    for rec in levels:
        missing = [f for f in LEVEL_FIELDS if f not in rec]
        assert not missing, missing
        assert rec["errors"] == 0 and rec["metrics_consistent"], rec
        # every bad body got a 4xx, or (a temperature too small to divide by, served greedy) a normal answer
        assert rec["bad_requests_sent"] == rec["bad_requests_4xx"] + rec["bad_requests_200"]
        assert rec["bad_requests_4xx"] > 0 and rec["bad_requests_accepted_wrongly"] == 0
        assert rec["tok_s"] > 0 and rec["rss_mb_end"] > 0
    kinds = {k: sum(r["requests_by_kind"][k] for r in levels) for k in ("chat", "completion", "responses")}
    assert all(kinds.values()), kinds  # every endpoint served under load, POST /v1/responses too
    assert sum(r["disconnects"] for r in levels) > 0  # some clients left mid-stream
    assert sum(r["greedy_compared"] for r in levels if r["concurrency"] == 4) > 0
    assert any(r["hit_rate"] < 1 for r in levels if r["cache_fraction"] == "0.5")  # the small cache misses
    for cfg in configs:
        assert cfg["errors_total"] == 0 and cfg["clean_exit"] and cfg["health_after"] == 200, cfg
        assert cfg["admission"]["long_prompt_tokens"] >= 1000 and cfg["admission"]["gaps_during"] > 0
    assert data["checkpoint"]["bundle_reused"] is False  # `exact` needed one, trained on the spot
