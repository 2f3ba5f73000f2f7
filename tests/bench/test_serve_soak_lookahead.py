"""Lookahead policies in `bench/serve_soak.py`: `exact+d` is served as `MOE_POLICY=exact` with a bundle trained
d MoE layers ahead (`bench/soak_checkpoint.py --distances`), `--after-demand` sets
`MOE_LOOKAHEAD_AFTER_DEMAND` on every server; and a CPU run of a tiny checkpoint that serves `exact+1` end to
end with a real `moe-prefetch serve` child: no errors, the server reports the distance-1 bundle, and no
prefetch targets the first MoE layer (a tap predicts only the layer after its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")  # bench.soak_run drives the servers with it

from bench.serve_soak import Conf, check_names, main, make_plan, parse_args, split_policy  # noqa: E402
from bench.soak_checkpoint import bundle_path, bundle_spec  # noqa: E402
from bench.soak_run import _check_server, log_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32"]


def test_split_policy():
    assert split_policy("exact") == ("exact", 0)
    assert split_policy("exact+2") == ("exact", 2)
    assert split_policy("overprovision+1") == ("overprovision", 1)
    assert split_policy("overprovision@6+2") == ("overprovision", 2)
    for bad in (
        "exact+",
        "exact+0",
        "exact+x",
        "exact+-1",
        "exact@6+2",
        "overprovision@x+1",
        "overprovision@0",
    ):
        with pytest.raises(ValueError):
            split_policy(bad)


def test_exact_plus_d_env_serves_exact_with_the_distance_bundle(tmp_path):
    args = parse_args([*TINY, "--configs", "0.5/none/segmented,0.5/exact+2/segmented"])
    plan = make_plan(args)
    assert [c.name for c in plan] == ["50%/none/segmented", "50%/exact+2/segmented"]
    none, ahead = plan
    assert (ahead.policy, ahead.server_policy, ahead.distance) == ("exact+2", "exact", 2)
    bundles = {0: tmp_path / "b", 2: tmp_path / "b-ahead2"}
    env = ahead.env(tmp_path / "ckpt", bundles, args, True)
    assert env["MOE_POLICY"] == "exact"
    assert env["MOE_PREDICTORS"] == str(tmp_path / "b-ahead2")
    assert env["MOE_LOOKAHEAD_AFTER_DEMAND"] == "false"  # off by default
    assert Conf("0.5", "exact", "streamed").env(tmp_path, bundles, args, True)["MOE_PREDICTORS"] == str(
        tmp_path / "b"
    )
    assert "MOE_PREDICTORS" not in none.env(tmp_path / "ckpt", bundles, args, False)
    assert "MOE_OVERPROVISION" not in env  # only a width sets it
    narrow = Conf("0.5", "overprovision@6+2", "segmented")
    nenv = narrow.env(tmp_path / "ckpt", bundles, args, True)
    assert (narrow.server_policy, narrow.distance) == ("overprovision", 2)
    assert nenv["MOE_POLICY"] == "overprovision" and nenv["MOE_OVERPROVISION"] == "6"
    assert nenv["MOE_PREDICTORS"] == str(tmp_path / "b-ahead2")
    check_names(args, ["overprovision@6+2"], ["segmented"])  # servable
    assert log_name(ahead) == "50pct_exact+2_segmented.log"


def test_a_coded_configuration_serves_with_coded_copies_and_checks_the_server_says_so(tmp_path):
    args = parse_args(
        [*TINY, "--configs", "0.5/none/segmented,0.5/exact+2/segmented/coded,1.0/none/streamed/coded"]
    )
    plain, coded, full = make_plan(args)
    assert (plain.coded, coded.coded, full.coded) == (False, True, True)
    assert (
        coded.name == "50%/exact+2/segmented/coded" and log_name(coded) == "50pct_exact+2_segmented_coded.log"
    )
    bundles = {0: tmp_path / "b", 2: tmp_path / "b2"}
    envs = [c.env(tmp_path, bundles, args, c.server_policy != "none") for c in (plain, coded, full)]
    assert [e["MOE_CODED_EXPERTS"] for e in envs] == ["false", "true", "true"]
    info = {"policy": "exact", "predictors": str(tmp_path / "b2")}
    assert _check_server(envs[1], {**info, "coded_copies": "true"}) == []
    assert _check_server(envs[1], {**info, "coded_copies": "false"}) != []  # asked for, not served
    assert _check_server(envs[0], {"policy": "none", "coded_copies": "true"}) != []  # not asked for
    # every expert resident: nothing is copied, so the server codes nothing
    assert _check_server(envs[2], {"policy": "none", "coded_copies": "false"}) == []
    for bad in ("0.5/none", "0.5/none/segmented/fast", "0.5/none/sideways", "0.5/exact+0/segmented"):
        with pytest.raises(SystemExit, match="--configs"):
            main([*TINY, "--configs", bad, "--out", str(tmp_path)])


def test_after_demand_sets_the_env_of_every_server(tmp_path):
    args = parse_args([*TINY, "--configs", "0.5/none/segmented,0.5/exact+1/streamed", "--after-demand"])
    assert args.after_demand is True
    for conf in make_plan(args):
        assert conf.env(tmp_path, {1: tmp_path / "b1"}, args, True)["MOE_LOOKAHEAD_AFTER_DEMAND"] == "true"
    assert parse_args([*TINY, "--no-after-demand"]).after_demand is False


def test_policies_flag_takes_lookahead_policies():
    """A policy the default plan lacks runs where its base policy does there (50%, streamed for exact)."""
    args = parse_args([*TINY, "--fractions", "1.0,0.5", "--policies", "none,exact+2", "--steps", "streamed"])
    assert [c.name for c in make_plan(args)] == [
        "100%/none/streamed",
        "50%/none/streamed",
        "50%/exact+2/streamed",
    ]
    args = parse_args([*TINY, "--plan", "cross", "--fractions", "0.5", "--policies", "exact+1,exact+3"])
    assert {c.policy for c in make_plan(args)} == {"exact+1", "exact+3"}


def test_bad_lookahead_policies_are_refused():
    args = parse_args(TINY)  # 4 layers: distances 1 to 3
    check_names(args, ["none", "exact", "exact+1", "exact+3", "overprovision+2"], ["segmented"])
    for bad in ("exact+0", "exact+4", "exact+x", "none+1", "crosslayer+1", "oracle+1", "nope"):
        with pytest.raises(SystemExit, match="unknown policy"):
            check_names(args, [bad], ["streamed"])
    with pytest.raises(SystemExit, match="only oracle and the predictor policies take a distance"):
        main([*TINY, "--configs", "0.5/none+2/streamed", "--out", "/nonexistent/out"])  # before any build


def test_bundle_paths_and_specs_differ_by_distance(tmp_path):
    base = tmp_path / "p"
    assert bundle_path(base, 0) == base
    assert bundle_path(base, 2) == tmp_path / "p-ahead2"
    spec = {"version": 1, "shape": "tiny"}
    assert bundle_spec(spec, 1) != bundle_spec(spec, 2) != bundle_spec(spec, 0)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return {k: v for k, v in env.items() if not k.startswith("MOE_")}


@pytest.mark.slow
def test_serve_soak_lookahead_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [
        sys.executable, str(ROOT / "bench" / "serve_soak.py"), *TINY, "--configs", "0.5/exact+1/segmented",
        "--after-demand", "--concurrency", "1,4", "--requests", "small", "--deadline", "150",
        "--out", str(out), "--work", str(work),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT, env=_env())
    tail = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, tail
    assert "soak: 1 configurations, 0 errors" in res.stdout, tail

    data = json.loads((out / "serve_soak_tiny.json").read_text())
    assert data["after_demand"] is True
    assert [p["name"] for p in data["plan"]] == ["50%/exact+1/segmented"]
    bundle = work / "tiny-l4-float32-e1-predictors-ahead1"
    assert set(data["checkpoint"]["bundles"]) == {"1"}  # only the distance the plan serves was trained
    assert data["checkpoint"]["bundles"]["1"]["reused"] is False
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (
        manifest["distance"] == 1 and manifest["num_moe_layers"] == 3 and manifest["layer_ids"] == [1, 2, 3]
    )

    (cfg,) = [r for r in data["records"] if r["record"] == "config"]
    assert cfg["policy"] == "exact+1" and cfg["configuration"] == "50%/exact+1/segmented"
    assert cfg["errors_total"] == 0 and cfg["clean_exit"] and cfg["health_after"] == 200, cfg
    env = cfg["server_env"]
    assert env["MOE_POLICY"] == "exact" and env["MOE_PREDICTORS"] == str(bundle)
    assert env["MOE_LOOKAHEAD_AFTER_DEMAND"] == "true" and env["MOE_HOST_READS"] == "false"
    # what the server itself reports serving (/metrics moe_policy_info)
    assert cfg["server_info"]["policy"] == "exact" and cfg["server_info"]["predictors"] == str(bundle)
    assert Path(cfg["server_log"]).name == "50pct_exact+1_segmented.log"
    assert "Application shutdown complete" in Path(cfg["server_log"]).read_text()

    levels = [r for r in data["records"] if r["record"] == "level"]
    assert [r["concurrency"] for r in levels] == [1, 4]
    for rec in levels:
        assert rec["errors"] == 0 and rec["metrics_consistent"] and rec["tok_s"] > 0, rec
        assert rec["policy"] == "exact+1"
        issued = rec["prefetch_issued_by_layer"]
        # one layer ahead: layer 0 is never a target, each later layer is
        assert issued["0"] == 0 and all(issued[k] > 0 for k in ("1", "2", "3")), issued
        assert rec["prefetch_used"] > 0

    # a bundle's spec has its distance: a distance-1 bundle in the distance-2 folder is retrained, the
    # distance-1 one is reused
    shutil.copytree(bundle, work / "tiny-l4-float32-e1-predictors-ahead2")
    cmd = [
        sys.executable, str(ROOT / "bench" / "soak_checkpoint.py"), *TINY[:2], "--layers", "4",
        *TINY[2:], "--out", str(work / "tiny-l4-float32-e1"), "--bundle", str(work / "tiny-l4-float32-e1-predictors"),
        "--distances", "1,2",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["checkpoint_reused"] is True
    assert summary["bundles"]["1"]["reused"] is True and summary["bundles"]["2"]["reused"] is False
    assert summary["bundle_reused"] is False
    manifest = json.loads((work / "tiny-l4-float32-e1-predictors-ahead2" / "manifest.json").read_text())
    assert manifest["distance"] == 2 and manifest["layer_ids"] == [2, 3]
