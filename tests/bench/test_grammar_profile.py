"""`bench/grammar_profile.py` on the built-in model (CPU): the engine's methods are timed per round, and only
constrained rounds spend time in the grammar masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_constrained_rounds_spend_time_in_masks_and_unconstrained_ones_do_not(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "grammar_profile.py"), "--device", "cpu", "--tokens", "12"]
    cmd += ["--runs", "1", "--streams", "1,2", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((tmp_path / "grammar_profile.json").read_text())
    assert doc["vocab_size"] > 0 and len(doc["records"]) == 4
    for s in ("1", "2"):
        row = doc["summary"][s]
        assert row["none"]["masks"] == 0.0 and row["none"]["fill"] == 0.0
        assert row["json_schema"]["masks"] > row["json_schema"]["fill"] > 0.0
        for fmt in ("none", "json_schema"):
            assert row[fmt]["round"] >= row[fmt]["decode"] > 0.0 and row[fmt]["accept"] > 0.0
        assert row["round_ratio"] > 0
