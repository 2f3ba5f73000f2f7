"""`bench/predictor_width.py` at toy size on the built-in model (CPU): one bank per width on the same traces
and split, the points each loses against the widest, and the Qwen3-shape weights of one layer's predictor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.predictor_width import layer_params  # noqa: E402
from engine.prefetch.nets import build_predictor  # noqa: E402


def test_layer_params_count_the_predictor_modules():
    for arch in (1, 2):
        for d, h, e in ((2048, 512, 128), (256, 64, 16)):
            net = build_predictor(arch, d, e, hidden=h)
            assert layer_params(arch, d, h, e) == sum(p.numel() for p in net.parameters())


def test_a_small_run_reports_every_width(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "predictor_width.py"), "--samples", "1200", "--epochs", "2"]
    cmd += ["--widths", "64,8", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads((tmp_path / "o" / "predictor_width_builtin.json").read_text())
    assert doc["traces"]["samples"] == 1200 and doc["num_layers"] == 6 and doc["d_model"] > 0
    assert [r["hidden"] for r in doc["widths"]] == [64, 8]
    wide, narrow = doc["widths"]
    assert wide["points_below_widest"]["recall_at_k"] == 0.0
    assert narrow["points_below_widest"]["recall_at_k"] == round(
        100 * (wide["mean"]["recall_at_k"] - narrow["mean"]["recall_at_k"]), 2
    )
    for r in doc["widths"]:
        assert len(r["layers"]) == 6
        assert 0.0 < r["mean"]["recall_at_k"] <= r["mean"]["overprov_recall"] <= 1.0
        assert r["qwen3_params_per_layer"] == layer_params(2, 2048, r["hidden"], 128)
        assert r["qwen3_bf16_mb_per_layer"] == round(2 * r["qwen3_params_per_layer"] / 1e6, 3)
    md = (tmp_path / "o" / "predictor_width_builtin.md").read_text()
    assert "| 64 |" in md and "| 8 |" in md and "Within 1 point of the 64-wide predictor" in md
    assert (tmp_path / "o" / "predictor_width_builtin.png").stat().st_size > 10_000
