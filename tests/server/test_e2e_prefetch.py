"""Prefetch policies through the real server and engine (built-in model on CPU).

- with a predictor bundle, a chat request works and /metrics carries every metric the README lists,
  with predictions, prefetches and prediction latency actually recorded;
- MOE_RECORD_ROUTING then MOE_POLICY=oracle over the same request: same text, and no misses with a
  cache that holds one layer's experts;
- a predictor policy without a bundle (a checkpoint that brings none), or with another model's bundle, stops the
  engine with a clear error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from engine.api.config import EngineConfig
from engine.api.errors import BundleMismatch, EngineError
from engine.model.builtin import load_builtin
from engine.model.loader import CacheBudget
from tests.bundles import builtin_bundle
from tests.server_harness import live_server

ROOT = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "Name three colours."}]


def readme_metric_names() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\| `(moe_[a-z_]+)` \|", text, flags=re.M)


def exposed(text: str, name: str) -> bool:
    base = name[: -len("_total")] if name.endswith("_total") else name
    return re.search(rf"^# TYPE ({re.escape(name)}|{re.escape(base)}) ", text, flags=re.M) is not None


def sample(text: str, pattern: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{pattern} ([0-9.e+-]+)$", text, flags=re.M))


def engine(**kw):
    from engine.frontend.async_engine import AsyncEngine

    return AsyncEngine.from_config(EngineConfig(device="cpu", seed=0, **kw))


def chat(live, max_tokens: int = 12) -> str:
    r = live.client.chat.completions.create(
        model=live.engine.model_card.id, messages=MSG, temperature=0, max_tokens=max_tokens
    )
    return r.choices[0].message.content


def test_metrics_after_a_request_with_a_predictor_policy(tmp_path):
    bundle = builtin_bundle(tmp_path / "bundle")
    eng = engine(policy="overprovision", predictors=str(bundle), expert_cache_fraction=0.5)
    with live_server(eng, timeout=120.0) as live:
        assert chat(live)
        text = live.http.get("/metrics").text
    names = readme_metric_names()
    assert len(names) >= 25
    missing = [n for n in names if not exposed(text, n)]
    assert not missing, f"README lists metrics /metrics does not expose: {missing}"
    families = set(re.findall(r"^# TYPE (moe_[a-z_]+) ", text, flags=re.M))
    undocumented = [f for f in families if f not in names and f + "_total" not in names]
    assert not undocumented, f"/metrics exposes metrics the README does not list: {undocumented}"
    assert sample(text, "moe_prediction_latency_seconds_count") > 0
    assert sample(text, r'moe_decode_steps_total\{kind="eager"\}') > 0  # the CPU runs every step eagerly
    assert sample(text, r'moe_decode_steps_total\{kind="streamed"\}') == 0
    for phase in ("launch", "route_wait", "route"):  # every phase is exposed; the CPU runs no segmented step
        assert sample(text, rf'moe_segmented_host_seconds_total\{{phase="{phase}"\}}') == 0
    assert sample(text, r'moe_prefetch_issued_total\{layer="\d+"\}') > 0
    assert sample(text, r'moe_predictor_routed_total\{layer="\d+"\}') > 0
    assert sample(text, r'moe_expert_bytes_copied_total\{reason="prefetch"\}') > 0
    assert 'policy="overprovision"' in text and str(bundle) in text


def test_record_then_oracle_replay_never_misses(tmp_path):
    routing = tmp_path / "routing.json"
    probe = load_builtin(torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0))
    one_layer = probe.store.layout.num_experts / probe.store.total_experts
    with live_server(
        engine(record_routing=str(routing), expert_cache_fraction=one_layer), timeout=120.0
    ) as live:
        first = chat(live)
    assert routing.is_file()  # written at shutdown
    oracle = engine(policy="oracle", oracle_trace=str(routing), expert_cache_fraction=one_layer)
    with live_server(oracle, timeout=120.0) as live:
        assert chat(live) == first
        text = live.http.get("/metrics").text
    assert sample(text, r'moe_expert_misses_total\{layer="\d+"\}') == 0
    assert sample(text, r'moe_expert_requests_total\{layer="\d+"\}') > 0
    assert sample(text, r'moe_prefetch_wasted_total\{layer="\d+"\}') == 0


def test_predictor_policy_without_or_with_a_foreign_bundle_fails_clearly(tmp_path, checkpoints):
    # a checkpoint of our own brings no bundle (the built-in model may ship one)
    with pytest.raises(EngineError, match="needs a predictor bundle"):
        engine(policy="exact", model=str(checkpoints["qwen3_moe"])).load()
    foreign = builtin_bundle(tmp_path / "foreign", fingerprint="0" * 64)
    with pytest.raises(BundleMismatch, match="trained for another model"):
        engine(policy="exact", predictors=str(foreign)).load()
