"""`bench/twin_eviction.py` on a committed twin artefact (the Phi-mini-MoE twin's, the smallest), its first
600 tokens: the orders keep their known relations (Belady's hit rate is never below an online order's; the
oracle never misses), the clairvoyant floor bounds every modelled time, and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTEFACT = ROOT / "bench" / "twins" / "twin_replay_phi-mini-moe.json"


def run_eviction(out: Path, *flags: str) -> None:
    """bench/twin_eviction.py on the Phi twin's artefact into `out`, one worker."""
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "twin_eviction.py"),
        "--twins",
        str(ARTEFACT),
        "--out",
        str(out),
    ]
    run = subprocess.run(
        [*cmd, "--workers", "1", *flags], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eviction")
    run_eviction(out, "--fractions", "0.25,0.5", "--policies", "none,exact,oracle", "--tokens", "600")
    doc = json.loads((out / "eviction_twins.json").read_text())
    doc["md"] = (out / "eviction_twins.md").read_text()
    doc["png"] = (out / "eviction_twins.png").stat().st_size
    return doc


def rows(doc: dict) -> list[dict]:
    (twin,) = doc["twins"]
    return twin["rows"]


def test_every_configuration_is_replayed_once(result):
    (twin,) = result["twins"]
    assert twin["twin"] == "phi-mini-moe" and twin["tokens"] == 600
    assert (twin["num_moe_layers"], twin["num_experts"], twin["top_k"]) == (32, 16, 2)
    keys = {(r["fraction"], r["eviction"], r["policy"]) for r in rows(result)}
    assert len(keys) == len(rows(result)) == 2 * 4 * 3


def test_belady_is_the_limit_and_the_oracle_never_misses(result):
    for f in (0.25, 0.5):
        by = {(r["eviction"], r["policy"]): r for r in rows(result) if r["fraction"] == f}
        for ev in ("lru", "lfu", "predicted"):
            assert by[("belady", "none")]["hit_rate"] >= by[(ev, "none")]["hit_rate"], (f, ev)
            assert by[(ev, "oracle")]["misses_per_token"] == 0.0
        assert by[("lru", "none")]["misses_per_token"] > 0  # the cache is too small to hold the routing
        assert by[("lru", "exact")]["prediction_recall"] > 0.5  # the twin's predictors were replayed


def test_the_floor_bounds_every_online_order(result):
    """No online order copies fewer bytes than Belady's demand paging (prefetching cannot beat it either)."""
    for r in rows(result):
        assert r["clairvoyant_floor_ms"] > 0
        if r["eviction"] in ("lru", "lfu", "predicted"):
            assert r["overlap_ms"] >= r["clairvoyant_floor_ms"] - 1e-9, r
        if r["eviction"] == "belady" and r["policy"] == "none":
            assert r["overlap_over_floor"] == pytest.approx(1.0)


def test_the_report_names_the_routing_and_the_command(result):
    assert "twin-replayed" in result["md"] and "phi-mini-moe" in result["md"]
    assert "bench/twin_eviction.py" in result["command"]
    assert result["png"] > 10_000


def test_the_hybrid_model_splits_misses_between_pcie_and_the_cpu(result):
    sys.path.insert(0, str(ROOT))
    from bench.twin_eviction import hybrid_ms

    t_copy, t_cpu = 9.4e6 / 55e6, 0.31 * 1.3  # ms per Qwen3-30B-A3B expert
    assert hybrid_ms(10, 9_400_000, {"bandwidth_gbs": 55.0, "step_ms": 1.0}) == pytest.approx(
        10 * t_copy * t_cpu / (t_copy + t_cpu)
    )
    assert hybrid_ms(0.1, 9_400_000, {"bandwidth_gbs": 55.0, "step_ms": 1.0}) == 1.0  # never below the step
    for r in rows(result):
        if r["policy"] == "none":
            assert 0 < r["hybrid_ms"] <= r["overlap_ms"] + 1e-9
        else:
            assert "hybrid_ms" not in r


def test_engine_figures_come_only_from_graph_steps_of_this_twin(tmp_path):
    """A decode record of another twin of the shape is left out; configurations whose steps all ran eager
    (a failed graph capture) give neither an engine figure nor the time model's resident step."""
    sys.path.insert(0, str(ROOT))
    from bench.twin_eviction import current_decode, engine_measured
    from predictors.simulate import TimeModel

    def config(fraction, policy, tok_s, steps):
        return {"fraction": fraction, "policy": policy, "summary": {"tok_s_median": tok_s, "hit_rate": 0.5},
                "steps": steps}  # fmt: skip

    graph, eager = {"graph": 30, "eager": 2, "segmented": 0}, {"graph": 0, "eager": 32, "segmented": 0}
    dec = {"device": "gpu", "h2d_gb_per_s": 50.0, "replay": {"twin_fingerprint": "a"},
           "configs": [config(1.0, "none", 200.0, graph), config(0.5, "none", 40.0, graph)]}  # fmt: skip
    out, tm, where = engine_measured(dec)
    assert out == {(1.0, "none"): (200.0, 0.5), (0.5, "none"): (40.0, 0.5)} and tm.step_ms == 5.0
    dec["configs"] = [config(1.0, "none", 15.0, eager), config(0.5, "none", 18.0, eager)]
    out, tm, where = engine_measured(dec)
    assert out == {} and tm.step_ms == TimeModel.step_ms and "ran eager" in where
    (tmp_path / "decode_toy_twin.json").write_text(json.dumps(dec))
    assert current_decode(tmp_path, "toy", {"twin_fingerprint": "a"}) == dec
    assert current_decode(tmp_path, "toy", {"twin_fingerprint": "b"}) is None
    assert current_decode(tmp_path, "other", {"twin_fingerprint": "a"}) is None


def test_merge_replaces_only_the_replayed_twin(result, tmp_path):
    """`--merge` keeps an existing report's other twins in their order and replaces the replayed one; a kept
    twin written before each entry recorded its command gets the old report's."""
    (phi,) = result["twins"]
    other = {k: v for k, v in phi.items() if k != "command"} | {"twin": "other-twin"}  # no command of its own
    stale = {**phi, "tokens": 1}
    before = {
        "kind": "eviction_twins",
        "command": "python bench/twin_eviction.py --out x",
        "twins": [other, stale],
    }
    (tmp_path / "eviction_twins.json").write_text(json.dumps(before))
    run_eviction(
        tmp_path,
        "--fractions",
        "0.5",
        "--policies",
        "none",
        "--evictions",
        "lru,belady",
        "--tokens",
        "200",
        "--merge",
    )
    twins = json.loads((tmp_path / "eviction_twins.json").read_text())["twins"]
    assert [t["twin"] for t in twins] == ["other-twin", "phi-mini-moe"]
    assert twins[0]["tokens"] == 600 and twins[1]["tokens"] == 200
    assert "--merge" in twins[1]["command"]
    assert twins[0]["command"] == before["command"]  # the kept twin's run
