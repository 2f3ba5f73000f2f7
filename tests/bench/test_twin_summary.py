"""`bench/twin_summary.py`: one checkable record per twin-replayed decode configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.twin_summary import records, summarise  # noqa: E402

FIELDS = {
    "shape",
    "batch",
    "cache_fraction",
    "policy",
    "tok_s",
    "ratio_to_none",
    "ratio_to_clairvoyant_floor",
}


def test_the_committed_runs_give_a_record_per_configuration():
    rows = summarise(ROOT / "bench" / "results")
    assert {r["shape"] for r in rows} == {"deepseek-v2-lite", "qwen3-30b-a3b", "phi-mini-moe"}
    assert {r["eviction"] for r in rows if r["shape"] == "deepseek-v2-lite"} == {"lru", "lfu"}
    assert any(r["batch"] == 8 and r["cache_fraction"] == 0.5 for r in rows)
    # exact from the earlier run, the oracles ahead from the latest
    ds = [r for r in rows if r["shape"] == "deepseek-v2-lite" and r["batch"] == 1]
    assert {("exact", 0.5), ("oracle+1", 0.5)} <= {(r["policy"], r["cache_fraction"]) for r in ds}
    keys = [
        (r["shape"], r["batch"], r["cache_fraction"], r["policy"], r["step"], r["eviction"]) for r in rows
    ]
    assert len(keys) == len(set(keys))
    for r in rows:
        assert FIELDS <= set(r) and r["tok_s"] > 0 and r["routing"].startswith("twin-replayed")
        if r["policy"] == "none" and r["step"] in ("chosen", "segmented"):
            assert r["ratio_to_none"] == 1.0
        if r["step"] in ("hybrid", "after-demand", "coded"):  # against plain `none` of the same run
            assert r["ratio_to_none"] is not None
        if r["ratio_to_clairvoyant_floor"] is not None:
            assert r["ratio_to_clairvoyant_floor"] * r["clairvoyant_floor_ms"] == pytest.approx(
                1e3 / r["tok_s"]
            )
    full = [r for r in rows if r["cache_fraction"] == 1.0 and r["policy"] == "none" and r["step"] == "chosen"]
    assert full and all(r["ratio_to_clairvoyant_floor"] == pytest.approx(1.0) for r in full)


def test_a_record_of_another_twin_is_left_out(tmp_path):
    twins, results = tmp_path / "twins", tmp_path / "results"
    twins.mkdir(), results.mkdir()
    dec = {"preset": "toy", "routing": "twin-replayed (toy)", "replay": {"twin_fingerprint": "a"},
           "configs": [_config(1.0, "none", 250.0)]}  # fmt: skip
    (results / "decode_toy_twin.json").write_text(json.dumps(dec))
    (twins / "twin_replay_toy.json").write_text(json.dumps({"twin_fingerprint": "b"}))
    assert summarise(results, twins) == []
    (twins / "twin_replay_toy.json").write_text(json.dumps({"twin_fingerprint": "a"}))
    assert [r["tok_s"] for r in summarise(results, twins)] == [250.0]


def _config(fraction, policy, tok_s, variant=None):
    c = {"fraction": fraction, "policy": policy, "summary": {"tok_s_median": tok_s, "hit_rate": 0.5}}
    return c | ({"variant": variant} if variant else {})


def test_the_floor_is_the_larger_of_the_resident_step_and_belady_bytes_per_token():
    dec = {
        "preset": "toy",
        "routing": "twin-replayed (toy)",
        "configs": [_config(1.0, "none", 250.0), _config(0.5, "none", 20.0), _config(0.5, "exact", 25.0),
                    _config(1.0, "none", 10.0, "eager")],
        "batched": {"engine": {"1.0": {"8": {"tok_s_median": 1000.0}}, "0.5": {"8": {"tok_s_median": 100.0}}}},
    }  # fmt: skip
    floor_of = {("toy", 0.5): {"bytes_per_token": 1e9, "bandwidth_gbs": 50.0}}  # 20 ms of copies per token
    rows = {(r["batch"], r["cache_fraction"], r["policy"]): r for r in records(dec, "toy.json", floor_of)}
    assert len(rows) == 5  # the eager ablation is left out
    assert rows[(1, 0.5, "none")]["clairvoyant_floor_ms"] == pytest.approx(
        20.0
    )  # bytes win over the 4 ms step
    assert rows[(1, 0.5, "none")]["ratio_to_clairvoyant_floor"] == pytest.approx(50.0 / 20.0)
    assert rows[(1, 0.5, "exact")]["ratio_to_none"] == pytest.approx(1.25)
    assert rows[(8, 0.5, "none")]["clairvoyant_floor_ms"] == pytest.approx(2.5)  # 20 ms / 8 rows > 1 ms
    assert rows[(8, 1.0, "none")]["ratio_to_clairvoyant_floor"] == pytest.approx(1.0)


def test_segmented_rows_are_against_segmented_none_and_hybrid_rows_against_chosen_none():
    dec = {
        "preset": "toy",
        "routing": "twin-replayed (toy)",
        "configs": [_config(0.5, "none", 20.0), _config(0.5, "none", 16.0, "segmented"),
                    _config(0.5, "none", 15.0, "hybrid"), _config(0.5, "oracle+1", 30.0, "hybrid"),
                    _config(0.5, "oracle+1", 24.0, "segmented")],
    }  # fmt: skip
    rows = {(r["policy"], r["step"]): r["ratio_to_none"] for r in records(dec, "toy.json", {})}
    assert rows[("oracle+1", "segmented")] == pytest.approx(24.0 / 16.0)
    assert rows[("none", "hybrid")] == pytest.approx(15.0 / 20.0)  # the host's share loses: below 1
    assert rows[("oracle+1", "hybrid")] == pytest.approx(30.0 / 20.0)


def test_coded_rows_are_against_plain_none_and_their_floor_moves_the_codes_bytes():
    from bench.twin_summary import records

    def cfg(policy, fraction, tok_s, variant=None):
        c = {"policy": policy, "fraction": fraction, "summary": {"tok_s_median": tok_s, "hit_rate": 0.5}}
        return c | ({"variant": variant} if variant else {})

    dec = {
        "preset": "qwen3-30b-a3b",
        "coded_experts": {"ratio": 0.5},
        "configs": [
            cfg("none", 1.0, 200.0),
            cfg("none", 0.5, 20.0),
            cfg("none", 0.5, 25.0, "coded"),
            cfg("exact+2", 0.5, 30.0, "coded-after-demand"),
        ],  # fmt: skip
    }
    floor = {("qwen3-30b-a3b", 0.5): {"bytes_per_token": 1e9, "bandwidth_gbs": 50.0}}  # 20 ms of copies
    rows = {(r["cache_fraction"], r["step"]): r for r in records(dec, "x.json", floor)}
    coded, plain = rows[0.5, "coded"], rows[0.5, "chosen"]
    assert coded["ratio_to_none"] == pytest.approx(25.0 / 20.0)
    both = rows[
        0.5, "coded-after-demand"
    ]  # both settings: against plain `none` too, the code's share of bytes
    assert both["ratio_to_none"] == pytest.approx(30.0 / 20.0) and both[
        "clairvoyant_floor_ms"
    ] == pytest.approx(10.0)
    assert plain["clairvoyant_floor_ms"] == pytest.approx(20.0) and coded[
        "clairvoyant_floor_ms"
    ] == pytest.approx(10.0)


def test_repeated_sessions_merge_to_their_medians(tmp_path):
    twins, results = tmp_path / "twins", tmp_path / "results"
    twins.mkdir(), results.mkdir()
    (twins / "twin_replay_toy.json").write_text(json.dumps({"twin_fingerprint": "a"}))

    def session(none, exact, name, extra=()):
        dec = {"preset": "toy", "routing": "twin-replayed (toy)", "replay": {"twin_fingerprint": "a"},
               "configs": [_config(1.0, "none", 200.0), _config(0.5, "none", none), _config(0.5, "exact", exact),
                           *extra]}  # fmt: skip
        (results / name).write_text(json.dumps(dec))

    session(20.0, 30.0, "decode_toy_coded_lfu.json")  # ratio 1.5
    session(40.0, 40.0, "decode_toy_coded_lfu_run2.json", [_config(0.5, "oracle", 50.0)])  # ratio 1.0
    session(30.0, 36.0, "decode_toy_coded_lfu_run3.json")  # ratio 1.2
    rows = {(r["cache_fraction"], r["policy"]): r for r in summarise(results, twins)}
    exact = rows[0.5, "exact"]
    assert exact["sessions"] == 3 and exact["tok_s_sessions"] == [30.0, 40.0, 36.0]
    assert exact["tok_s"] == 36.0  # the median tok/s
    assert exact["ratio_to_none"] == pytest.approx(1.2)  # the median of each session's own ratio
    assert rows[0.5, "none"]["tok_s"] == 30.0 and rows[0.5, "none"]["ratio_to_none"] == 1.0
    assert rows[0.5, "oracle"]["sessions"] == 1 and rows[0.5, "oracle"]["ratio_to_none"] == pytest.approx(
        1.25
    )
    assert len(rows) == 4 and "_run2" in exact["source"]


def test_merged_sessions_take_their_floor_from_the_median_resident_step(tmp_path):
    """Sessions measure their own resident step; a merged record's floor is the median one's (a session
    without a full-cache run adds nothing to it), so the resident row is exactly at its floor."""
    twins, results = tmp_path / "twins", tmp_path / "results"
    twins.mkdir(), results.mkdir()
    (twins / "twin_replay_toy.json").write_text(json.dumps({"twin_fingerprint": "a"}))
    # Belady's bytes at 50%: 0.5 GB a token at 100 GB/s = 5 ms, under the resident step of every session
    ev = {"twins": [{"twin": "toy", "time_model": {"bandwidth_gbs": 100.0},
                     "rows": [{"eviction": "belady", "policy": "none", "fraction": 0.5, "bytes_per_token": 5e8}]}]}  # fmt: skip
    (results / "eviction_twins.json").write_text(json.dumps(ev))
    for name, resident in (
        ("", 100.0),
        ("_run2", 125.0),
        ("_run3", 160.0),
        ("_run4", 200.0),
        ("_run5", None),
    ):
        configs = [_config(0.5, "none", 50.0)] + ([_config(1.0, "none", resident)] if resident else [])
        dec = {"preset": "toy", "routing": "twin-replayed (toy)", "replay": {"twin_fingerprint": "a"},
               "configs": configs}  # fmt: skip
        (results / f"decode_toy_coded_lfu{name}.json").write_text(json.dumps(dec))
    rows = {r["cache_fraction"]: r for r in summarise(results, twins)}
    assert rows[1.0]["tok_s"] == pytest.approx(142.5) and rows[1.0]["sessions"] == 4
    assert rows[1.0]["ratio_to_clairvoyant_floor"] == pytest.approx(1.0)
    assert rows[0.5]["clairvoyant_floor_ms"] == pytest.approx(
        1e3 / 142.5
    )  # the median step, not the first's 10 ms
    assert rows[0.5]["ratio_to_clairvoyant_floor"] == pytest.approx(20.0 / (1e3 / 142.5))
    assert not any(k.startswith("_") for r in rows.values() for k in r)
