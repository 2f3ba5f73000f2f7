"""`bench/twin_timeline.py` on the committed DeepSeek-V2-Lite twin artefact and decode record (CPU, a few
hundred tokens): the clock is fitted to the engine's `none` at 50%, every configuration gets a modelled time
beside the engine's where it measured one, and the oracle issued ahead is among them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_fits_the_clock_and_reports_every_configuration(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "twin_timeline.py"),
        "--tokens",
        "150",
        "--out",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "timeline_deepseek_v2_lite.json").read_text())
    assert doc["tokens"] == 150 and doc["routing"].startswith("twin-replayed")
    ahead = ("exact+1", "overprovision+1", "oracle+1", "oracle+2", "oracle+4")  # the twin has a d=1 bank
    policies = {"none", "exact", "oracle", *ahead, "none + hybrid", "oracle+1 + hybrid"}
    after = {f"{p} after demand" for p in ahead}  # MOE_LOOKAHEAD_AFTER_DEMAND, under LRU
    assert {(r["fraction"], r["eviction"], r["policy"]) for r in doc["rows"]} == {
        (f, e, p) for f in (0.25, 0.5, 0.75) for e in ("lru", "lfu") for p in policies
    } | {(f, "lru", p) for f in (0.25, 0.5, 0.75) for p in after}
    by = {(r["fraction"], r["eviction"], r["policy"]): r for r in doc["rows"]}
    for (f, e, p), r in by.items():  # the host's share only ever shortens a layer: never slower
        if r["hybrid"]:
            plain = by[(f, e, p.removesuffix(" + hybrid"))]
            assert r["engine_ms"] is None and r["model_ms"] <= plain["model_ms"] + 1e-9
            assert r["copies_per_token"] == plain["copies_per_token"]  # the same misses, fewer of them copied
    assert by[(0.25, "lru", "none + hybrid")]["model_ms"] < by[(0.25, "lru", "none")]["model_ms"]
    fit = next(r for r in doc["rows"] if (r["fraction"], r["eviction"], r["policy"]) == (0.5, "lru", "none"))
    assert fit["model_ms"] == pytest.approx(fit["engine_ms"], rel=1e-6)  # the one fitted number
    assert doc["clock"]["decision_ms"] > 0
    for r in doc["rows"]:
        assert r["model_ms"] > 0 and 0 <= r["hit_rate"] <= 1
        if (r["eviction"], r["policy"]) == ("lru", "none"):
            assert r["model_ratio_to_none"] == 1.0
        if r["policy"] in ("oracle+1", "exact+1") and r["eviction"] == "lru":
            assert r["engine_ms"] is not None  # the engine ran these on this twin
        if r["after_demand"]:  # the same copies, queued later: the same hits and bytes (this record ran none)
            plain = by[(r["fraction"], "lru", r["policy"].removesuffix(" after demand"))]
            assert r["engine_ms"] is None and r["copies_per_token"] == plain["copies_per_token"]
    lfu = next(r for r in doc["rows"] if (r["fraction"], r["eviction"], r["policy"]) == (0.5, "lfu", "none"))
    assert lfu["engine_ms"] is not None  # the LFU sweep of the same call (decode_deepseek_v2_lite_lfu.json)
    md = (tmp_path / "timeline_deepseek_v2_lite.md").read_text()
    assert "`oracle+1`" in md and "fitted: none at 50%" in md


def test_lfu_ratios_across_device_calls_are_flagged():
    """The LFU engine rows are divided by the LRU record's `none`: the page says so when the two records
    come from different device calls (or do not say when they started)."""
    from bench.twin_timeline import _calls_note

    one = {"lru": "2026-12-01 19:40:00 UTC", "lfu": "2026-12-01 19:45:00 UTC"}
    two = {"lru": "2026-12-01 19:40:00 UTC", "lfu": "2026-12-01 18:10:00 UTC"}
    assert _calls_note(one, True) == ""
    assert "another device call" in _calls_note(two, True)
    assert "another device call" in _calls_note({"lru": None, "lfu": None}, True)
    assert _calls_note(two, False) == ""  # no LFU engine row: nothing to flag


def test_the_trained_lookahead_banks_play_on_the_clock(tmp_path):
    """The committed Phi-mini-MoE twin carries lookahead banks 1 and 2 (`train_twin --lookahead`): the clock
    plays them as `exact+d` (the bank's top-k for layer i + d issued at layer i's tap) beside the engine's
    measured `exact+d`, and a bank issued ahead copies what it predicts before the layer needs it."""
    twin = ROOT / "bench" / "twins" / "twin_replay_phi-mini-moe.json"
    cmd = [sys.executable, str(ROOT / "bench" / "twin_timeline.py"), "--twin", str(twin), "--tokens", "300",
           "--fractions", "0.5", "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "timeline_phi_mini_moe.json").read_text())
    by = {(r["eviction"], r["policy"]): r for r in doc["rows"]}
    for d in (1, 2):
        r = by[("lru", f"exact+{d}")]
        assert r["engine_ms"] is not None  # decode_phi_mini_moe_twin.json measured it
        assert r["hit_rate"] > by[("lru", "none")]["hit_rate"]
        assert r["copies_per_token"] >= by[("lru", "none")]["copies_per_token"]  # wrong guesses copy too
    assert by[("lru", "oracle+1")]["hit_rate"] >= by[("lru", "exact+1")]["hit_rate"]


def test_coded_copies_play_with_fewer_bytes(tmp_path):
    """`--coded R`: `none`, `exact+d` and `oracle+d` again with copies of R x an expert's bytes; the same hits
    and copies, and never slower than the same configuration with full-size copies."""
    twin = ROOT / "bench" / "twins" / "twin_replay_phi-mini-moe.json"
    cmd = [sys.executable, str(ROOT / "bench" / "twin_timeline.py"), "--twin", str(twin), "--tokens", "300",
           "--fractions", "0.25", "--fit-fraction", "0.25", "--evictions", "lru", "--coded", "0.5",
           "--out", str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "timeline_phi_mini_moe.json").read_text())
    assert doc["coded_ratio"] == 0.5 and {r["eviction"] for r in doc["rows"]} == {"lru"}
    by = {r["policy"]: r for r in doc["rows"]}
    coded = {p for p, r in by.items() if r["coded"]}
    assert coded == {"none coded", "exact+1 coded", "exact+2 coded", "oracle+1 coded", "oracle+2 coded"}
    for p in coded:
        plain = by[p.removesuffix(" coded")]
        assert by[p]["engine_ms"] is None  # bytes only: not the engine's coded copies
        assert (
            by[p]["copies_per_token"] == plain["copies_per_token"] and by[p]["hit_rate"] == plain["hit_rate"]
        )
        assert by[p]["model_ms"] < plain["model_ms"]  # the copies bound these steps at 25%


def test_the_engines_coded_copy_path_plays_on_the_clock_fitted_to_the_coded_call(tmp_path):
    """`--coded coded_experts.json --decode-kind coded_lru`: the clock fitted to the coded call's plain `none`,
    the coded rows modelled with the H200's measured code copy, staging rows, batched decodes and host time,
    set beside that call's coded runs; the what-ifs (16 staging rows, the host as on a plain copy) are never
    slower and have no engine run."""
    twin = ROOT / "bench" / "twins" / "twin_replay_qwen3-30b-a3b.json"
    cmd = [sys.executable, str(ROOT / "bench" / "twin_timeline.py"), "--twin", str(twin), "--tokens", "80",
           "--fractions", "0.5", "--fit-fraction", "0.5", "--evictions", "lru", "--decode-kind", "coded_lru",
           "--coded", str(ROOT / "bench" / "results" / "coded_experts.json"), "--out", str(tmp_path),
           "--widths", "6", "--only", "exact+2,oracle+1,overprovision@6+2", "--predict-ms", "0.0325"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "timeline_qwen3_30b_a3b.json").read_text())
    coding = doc["coding"]
    assert doc["coded_ratio"] is None and 0.7 < coding["copy_share"] < 0.85  # 0.137 / 0.177 ms on the H200
    assert coding["staging"] == 8 and coding["decode_base_ms"] > 0 and coding["host_extra_ms"] > 0
    by = {r["policy"]: r for r in doc["rows"]}
    for p in ("none", "exact+2", "oracle+1"):  # the coded call measured these plain and coded
        plain, coded = by[p], by[f"{p} coded"]
        assert plain["engine_ms"] is not None and coded["engine_ms"] is not None
        assert coded["engine_ratio_to_none"] == pytest.approx(by["none"]["engine_ms"] / coded["engine_ms"])
        assert coded["copies_per_token"] == plain["copies_per_token"] and coded["coded"]
        for what_if in (", 16 rows", ", host as plain"):
            r = by[f"{p} coded{what_if}"]
            assert r["engine_ms"] is None and r["model_ms"] <= coded["model_ms"] + 1e-9
    after = by["exact+2 after demand coded"]
    assert (
        after["coded"]
        and after["after_demand"]
        and after["copies_per_token"] == by["exact+2"]["copies_per_token"]
    )
    assert by["exact+2 after demand"]["engine_ms"] is not None  # the call's plain after-demand run
    # --widths: the two-ahead bank's top-6 (fewer, surer copies than its top-8), coded and after demand too;
    # --only: nothing else was played
    narrow = by["overprovision@6+2"]
    assert narrow["copies_per_token"] < by["exact+2"]["copies_per_token"]
    assert narrow["hit_rate"] < by["exact+2"]["hit_rate"]
    assert {"overprovision@6+2 coded", "overprovision@6+2 after demand coded"} <= set(by)
    assert not {"exact", "exact+1", "oracle", "overprovision@6+1"} & set(by)
    md = (tmp_path / "timeline_qwen3_30b_a3b.md").read_text()
    assert "staging rows" in md and "`exact+2 after demand coded`" in md
    assert doc["clock"]["predict_ms_trained"] == 0.0325 and "predictor in line 0.0325 ms" in md


def test_the_measured_coding_scales_its_decode_with_the_experts_weights():
    from bench.twin_timeline import coding_from

    path = ROOT / "bench" / "results" / "coded_experts.json"
    measured = json.loads(path.read_text())["weights_per_expert"]
    one, two = coding_from(path), coding_from(path, weights=2 * measured)
    assert two.decode_per_expert_ms == pytest.approx(2 * one.decode_per_expert_ms)
    assert (two.decode_base_ms, two.copy_share, two.host_extra_ms) == (
        one.decode_base_ms,
        one.copy_share,
        one.host_extra_ms,
    )
    # one code and eight in a launch, as measured (steps 128): 0.074 and 0.181 ms
    assert one.decode_ms(1) == pytest.approx(0.0741, abs=1e-4) and one.decode_ms(8) == pytest.approx(
        0.1809, abs=1e-4
    )
