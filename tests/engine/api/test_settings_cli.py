"""Settings: invalid values fail at start-up with one clear line naming the variable; --help documents all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moe_prefetch.settings import Settings, SettingsError, describe_variables, load_settings


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"MOE_PORT": "eighty"}, "MOE_PORT"),
        ({"MOE_PORT": "70000"}, "MOE_PORT"),
        ({"MOE_EXPERT_CACHE_FRACTION": "1.5"}, "MOE_EXPERT_CACHE_FRACTION"),
        ({"MOE_EXPERT_CACHE_FRACTION": "0"}, "MOE_EXPERT_CACHE_FRACTION"),
        ({"MOE_POLICY": "psychic"}, "MOE_POLICY"),
        ({"MOE_DEVICE": "tpu"}, "MOE_DEVICE"),
        ({"MOE_DTYPE": "int3"}, "MOE_DTYPE"),
        ({"MOE_MODEL": "/does/not/exist"}, "MOE_MODEL"),
        ({"MOE_EXPERT_CACHE_FRACTION": "0.5", "MOE_EXPERT_CACHE_GB": "3"}, "MOE_EXPERT_CACHE_FRACTION"),
    ],
)
def test_invalid_values_name_the_variable(env, var, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    msg = str(err.value)
    assert var in msg and "\n" not in msg


def test_flags_override_env(monkeypatch):
    monkeypatch.setenv("MOE_PORT", "9000")
    assert load_settings().port == 9000
    assert load_settings(port=9100).port == 9100
    cfg = load_settings(policy="exact", expert_cache_fraction=0.25).engine_config()
    assert cfg.policy == "exact" and cfg.expert_cache_fraction == 0.25


def test_escape_hatches_reach_the_runner(monkeypatch):
    monkeypatch.setenv("MOE_CUDA_GRAPHS", "false")
    monkeypatch.setenv("MOE_FUSED_KERNELS", "0")
    monkeypatch.setenv("MOE_HOST_READS", "no")
    monkeypatch.setenv("MOE_STREAM_MISS_MB", "0")
    cfg = load_settings(device="cpu").engine_config()
    assert cfg.cuda_graphs is False and cfg.fused_kernels is False and cfg.host_reads is False
    from engine.frontend.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(cfg)
    engine.load()  # the built-in model on the CPU; no loop thread is started
    assert engine.runner.kernels is False and engine.runner.use_triton is False
    assert engine.runner.graphs_enabled is False and engine.runner.attention is None
    assert engine.runner.host_reads is False and engine.runner.streams is False
    assert engine.runner.stream_miss_limit is None  # 0 MB: always streamed where streaming is possible
    assert load_settings(stream_miss_mb=64).engine_config().stream_miss_mb == 64
    assert load_settings(cuda_graphs=True).engine_config().cuda_graphs is True  # a flag wins over the env


def test_every_setting_is_described():
    rows = describe_variables()
    assert len(rows) == len(Settings.model_fields)
    assert all(desc for _, _, desc in rows)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moe_prefetch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_documents_commands_and_variables():
    out = _cli("--help").stdout
    assert "serve" in out and "variables" in out
    serve_help = _cli("serve", "--help").stdout
    for var, _, _ in describe_variables():
        assert var in serve_help, var


def test_serve_with_a_bad_variable_prints_one_line_and_exits():
    res = _cli("serve", env={"MOE_EXPERT_CACHE_FRACTION": "2"})
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "MOE_EXPERT_CACHE_FRACTION" in lines[0]


def test_readme_variables_table_matches_the_settings():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    rows = re.findall(r"^\| `(MOE_[A-Z_]+)` \| (.*?) \| (.*) \|$", readme, flags=re.M)
    assert rows == [(v, d, m) for v, d, m in describe_variables()]


def test_serve_with_a_predictor_policy_and_no_bundle_says_so(checkpoints):
    res = _cli(
        "serve", env={"MOE_MODEL": str(checkpoints["qwen3_moe"]), "MOE_POLICY": "exact", "MOE_DEVICE": "cpu"}
    )
    assert res.returncode == 1
    assert "MOE_POLICY=exact needs a predictor bundle" in res.stderr and "MOE_PREDICTORS" in res.stderr
    assert "Traceback" not in res.stderr


def test_settings_and_flags_are_made_from_the_engine_config():
    from dataclasses import fields

    from engine.api.config import EngineConfig
    from moe_prefetch.settings import OPTIONS

    assert list(OPTIONS) == list(Settings.model_fields)
    for f in fields(EngineConfig):  # one default per engine setting, read by the settings class
        assert Settings.model_fields[f.name].default == f.default, f.name
    for name, (_, _, opt) in OPTIONS.items():  # each flag's help names the variable it overrides
        assert f"[MOE_{name.upper()}]" in opt.flag_help, name
