"""`moe-prefetch simulate` end to end on tiny inputs: a synthetic trace set with a bundle, a routing recording,
the expert size from a model, and the errors a user can make."""

from __future__ import annotations

import json

import pytest
import torch
from predictor_fixtures import write_synthetic_traces
from typer.testing import CliRunner

from engine.prefetch.nets import PredictorBank
from engine.prefetch.routing_trace import RoutingRecorder
from predictors.bundle import save_bundle
from predictors.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, ["simulate", *[str(a) for a in args]], terminal_width=200)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    traces = write_synthetic_traces(root / "traces", n_prompts=6, tokens=15, layers=3)
    torch.manual_seed(0)
    bank = PredictorBank(2, d_model=16, num_experts=8, num_layers=3, hidden=8)
    bundle = save_bundle(root / "bundle", bank, {"fingerprint": "synthetic-0", "loss": "wbce"})
    return traces, bundle


def test_traces_with_a_bundle_write_json_png_and_the_capacity_answer(tiny, tmp_path):
    traces, bundle = tiny
    out = tmp_path / "out"
    r = _invoke(
        "--traces", traces, "--predictors", bundle, "--fractions", "0.1,0.5,1.0", "--expert-mb", "9.4",
        "--target-hit", "0.6", "--out", out, "--no-progress",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "simulate.json").read_text())
    assert (out / "simulate.png").stat().st_size > 10_000
    assert doc["steps"] == 90 and doc["total_experts"] == 24 and doc["expert_bytes"] == 9_400_000
    labels = {"none", "exact", "overprovision(3)", "top1", "adaptive(0.9,4)", "crosslayer", "oracle"}
    assert set(doc["policies"]) == labels
    assert len(doc["results"]) == 3 * 3 * 7  # sizes x evictions x policies
    for row in doc["results"]:
        assert 0.0 <= row["resident_hit_rate"] <= row["hit_rate"] <= 1.0
        assert row["overlap_ms"] >= 4.6 and row["serial_ms"] >= 4.6
        # the clock: the resident step, a decision at every router (and every predicting tap), and the copies
        assert row["clock_ms"] >= 4.6 + 3 * 0.277 - 1e-9
        c = row["counts"]
        assert row["bytes_per_token"] == pytest.approx((c["misses"] + c["prefetch_issued"]) * 9.4e6 / 90)
        if row["slots"] == 24:  # every expert fits: preloaded, as the server does
            assert row["hit_rate"] == 1.0 and c["misses"] == 0
    assert len(doc["capacity"]) == 3 * 7
    lru_none = next(c for c in doc["capacity"] if c["eviction"] == "lru" and c["policy"] == "none")
    assert doc["target_metric"] == "resident_hit_rate"
    assert lru_none["reached"] >= 0.6 and 2 <= lru_none["slots"] <= 24
    oracle = next(c for c in doc["capacity"] if c["eviction"] == "lru" and c["policy"] == "oracle")
    assert oracle["slots"] >= lru_none["slots"]  # prefetch hits do not count as resident hits
    assert lru_none["gigabytes"] == pytest.approx(lru_none["slots"] * 9.4e-3)
    assert "smallest cache reaching 60% resident hits" in r.output and "MOE_EXPERT_CACHE_GB=" in r.output
    assert "overlap ms" in r.output and "serial ms" in r.output and "clock ms" in r.output
    assert doc["time_model"]["decision_ms"] == 0.277 and "clock_ms" in doc["time_model"]
    full = next(
        x for x in doc["results"] if x["slots"] == 24 and x["eviction"] == "lru" and x["policy"] == "none"
    )
    assert full["clock_ms"] == pytest.approx(4.6 + 3 * 0.277)  # nothing to copy, three routers to decide


def test_the_clock_takes_its_settings_and_refuses_a_share_outside_zero_to_one(tiny, tmp_path):
    traces, _ = tiny
    common = [
        "--traces",
        traces,
        "--policies",
        "none",
        "--eviction",
        "lru",
        "--fractions",
        "1.0",
        "--expert-mb",
        "9.4",
    ]
    r = _invoke(*common, "--decision-ms", "0", "--step-ms", "3", "--out", tmp_path, "--no-progress")
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "simulate.json").read_text())["results"]
    assert row["clock_ms"] == pytest.approx(3.0)
    r = _invoke(*common, "--attention-share", "1.5", "--no-progress")
    assert r.exit_code == 2 and "--attention-share" in r.output
    r = _invoke(*common, "--host-expert-ms", "-1", "--no-progress")
    assert r.exit_code == 2 and "--host-expert-ms" in r.output


def test_hybrid_misses_on_the_clock_never_slow_a_configuration(tiny, tmp_path):
    traces, _ = tiny
    common = ["--traces", traces, "--policies", "none", "--eviction", "lru", "--fractions", "0.2,0.5",
              "--expert-mb", "9.4", "--no-progress"]  # fmt: skip
    rows = {}
    for host in ("0", "0.05"):
        r = _invoke(*common, "--host-expert-ms", host, "--out", tmp_path / host)
        assert r.exit_code == 0, r.output
        doc = json.loads((tmp_path / host / "simulate.json").read_text())
        assert doc["time_model"]["host_expert_ms"] == float(host)
        rows[host] = {x["slots"]: x for x in doc["results"]}
    assert "the host computing part of the misses at 0.05 ms" in r.output
    for slots, plain in rows["0"].items():
        hybrid = rows["0.05"][slots]
        assert hybrid["counts"] == plain["counts"]  # the same cache; only the clock changes
        assert hybrid["clock_ms"] <= plain["clock_ms"] + 1e-9
    assert any(rows["0.05"][s]["clock_ms"] < rows["0"][s]["clock_ms"] for s in rows["0"])  # a fast host pays


def test_a_routing_recording_replays_none_and_oracle_and_refuses_predictor_policies(tmp_path):
    rec = RoutingRecorder(2)
    for t in range(40):
        for layer in range(2):
            rec.record(layer, [t % 5, (t * 3 + layer) % 6 + 5])
    path = rec.save(tmp_path / "routing.json", "fp")
    r = _invoke("--routing", path, "--model", "phi-mini-moe", "--fractions", "0.5", "--no-progress")
    assert r.exit_code == 2 and "phi-mini-moe: 32 MoE layers x 16 experts" in r.output
    r = _invoke("--routing", path, "--fractions", "0.25,0.5", "--eviction", "lru,belady", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "none" in r.output and "oracle" in r.output and "crosslayer" not in r.output
    assert "no expert size" in r.output
    r = _invoke("--routing", path, "--policies", "none,exact", "--no-progress")
    assert r.exit_code == 2 and "routing recording" in r.output and "moe-prefetch collect" in r.output


def test_expert_size_from_a_preset_and_cache_gb(tiny, tmp_path):
    traces, _ = tiny
    r = _invoke("--traces", traces, "--policies", "exact", "--no-progress")
    assert r.exit_code == 2 and "--predictors" in r.output
    r = _invoke("--traces", traces, "--cache-gb", "0.1", "--no-progress")
    assert r.exit_code == 2 and "expert size" in r.output
    r = _invoke(
        "--traces", traces, "--policies", "none", "--eviction", "lru", "--fractions", "", "--cache-gb",
        "0.05,0.1", "--expert-mb", "9.4", "--out", tmp_path, "--no-progress",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "simulate.json").read_text())
    assert [row["slots"] for row in doc["results"]] == [5, 10]  # int(GB * 1e9 // expert bytes)
    r = _invoke("--traces", traces, "--routing", traces, "--no-progress")
    assert r.exit_code != 0


def test_the_top_level_command_list_mounts_simulate():
    from moe_prefetch import cli

    cli._mount_predictors()
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    assert "simulate" in names


def test_expert_bytes_from_presets_match_the_measured_facts():
    from predictors.sim_inputs import model_shape

    assert model_shape("qwen3-30b-a3b").expert_bytes == 3 * 2048 * 768 * 2  # 9.4 MB
    assert model_shape("deepseek-v2-lite").expert_bytes == 3 * 2048 * 1408 * 2  # 17.3 MB
    shape = model_shape("phi-mini-moe", "float32")
    assert (shape.num_layers, shape.num_experts, shape.top_k) == (32, 16, 2)
