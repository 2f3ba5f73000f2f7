"""`bench/predictor_step_cost.py` on the committed decode records: each row's cost is 1/tok_s(exact) -
1/tok_s(none) of its own record, spread over the twin's MoE layers; the JSON and the plot are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def test_the_committed_records_give_one_row_each(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "predictor_step_cost.py"), "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    table = json.loads((tmp_path / "predictor_step_cost.json").read_text())
    assert {(r["shape"], r["implementation"]) for r in table} >= {
        ("deepseek-v2-lite", "torch, in line"),
        ("deepseek-v2-lite", "torch, parallel branch"),
        ("qwen3-30b-a3b", "torch, parallel branch"),
    }
    for r in table:
        dec = json.loads((RESULTS / r["record"]).read_text())
        tok = {
            c["policy"]: c["summary"]["tok_s_median"]
            for c in dec["configs"]
            if c["fraction"] == 1.0 and not c.get("variant")
        }
        layers = json.loads((ROOT / "bench" / "twins" / f"twin_replay_{r['shape']}.json").read_text())
        ms = 1e3 * (1 / tok["exact"] - 1 / tok["none"])
        assert r["ms_per_token"] == pytest.approx(ms, abs=1e-3)
        assert r["us_per_layer"] == pytest.approx(1e3 * ms / layers["num_moe_layers"], abs=0.01)
        assert ("parallel branch" in r["implementation"]) is bool(dec.get("predictor_overlap"))
    assert (tmp_path / "predictor_step_cost.png").stat().st_size > 0


def test_no_record_is_an_error(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "predictor_step_cost.py"), "--results", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "no decode_<shape>_predictor_<impl>.json" in res.stderr
