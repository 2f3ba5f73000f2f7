"""`bench/lookahead_recall.py` at toy size on the built-in model (CPU): it collects, trains one bank per
distance, and reports each distance's predictor and baselines over the right source and target layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_reports_every_distance(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "lookahead_recall.py"), "--samples", "1200", "--epochs", "1"]
    cmd += [
        "--hidden",
        "16",
        "--distances",
        "0,2",
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path / "o"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((tmp_path / "o" / "lookahead_builtin.json").read_text())
    assert doc["traces"]["samples"] == 1200 and doc["num_layers"] == 6 and doc["top_k"] == 2
    assert [r["distance"] for r in doc["distances"]] == [0, 2]
    for r in doc["distances"]:
        d = r["distance"]
        assert [(x["source_layer"], x["target_layer"]) for x in r["layers"]] == [
            (i, i + d) for i in range(6 - d)
        ]
        for m in ("predictor", "router_ahead", "prior"):
            assert 0.0 < r["mean"][m]["recall_at_k"] <= r["mean"][m]["overprov_recall"] <= 1.0
    md = (tmp_path / "o" / "lookahead_builtin.md").read_text()
    assert "| 2 |" in md and "OLMoE" in md
    assert (tmp_path / "o" / "lookahead_builtin.png").stat().st_size > 10_000
