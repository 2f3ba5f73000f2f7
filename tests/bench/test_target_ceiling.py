"""`bench/target_ceiling.py` and `bench/expert_entropy.py`: what issue #17's targets need in bytes, and what a
lossless code of the experts' exponents would supply."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.expert_entropy import (  # noqa: E402
    builtin_experts,
    entropy_bits,
    exponent_counts,
    huffman_mean_bits,
    measure,
    random_expert,
)
from bench.target_ceiling import ceilings, main  # noqa: E402


def _doc(none_tok_s: float = 20.0) -> tuple[dict, list[dict]]:
    """One twin: resident 5 ms, 50 GB/s; LRU copies 1,000 MB a token (20 ms), LFU 900, Belady 200 (4 ms:
    the resident step bounds it)."""
    rows = []
    for f in (0.5, 0.25):
        for order, mb in (("lru", 1000.0), ("lfu", 900.0), ("belady", 200.0)):
            rows.append(
                {
                    "fraction": f,
                    "eviction": order,
                    "policy": "none",
                    "bytes_per_token": mb * 1e6,
                    "overlap_ms": max(5.0, mb / 50.0),
                }
            )
    doc = {"twins": [{"twin": "t", "time_model": {"step_ms": 5.0, "bandwidth_gbs": 50.0}, "rows": rows}]}
    summary = [
        {"shape": "t", "cache_fraction": f, "policy": "none", "batch": 1, "step": "chosen", "eviction": "lru",
         "tok_s": none_tok_s, "source": "x"}
        for f in (0.5, 0.25)
    ]  # fmt: skip
    return doc, summary


def test_ceilings_and_budgets_follow_from_bytes_and_bandwidth():
    doc, summary = _doc()
    half, quarter = ceilings(doc, summary, coded_ratio=0.5)
    assert (half["cache_fraction"], half["target"], quarter["target"]) == (0.5, 1.5, 2.0)
    assert half["engine_none_ms"] == 50.0  # 20 tok/s
    assert half["lru_ceiling"] == pytest.approx(50.0 / 20.0)
    assert half["lfu_ceiling"] == pytest.approx(50.0 / 18.0, abs=1e-3)
    assert half["belady_ceiling"] == pytest.approx(50.0 / 5.0)  # the resident step bounds it
    assert half["allowed_mb_per_token"] == pytest.approx(50.0 / 1.5 * 50.0, abs=0.1)  # ms x GB/s = MB
    assert quarter["allowed_mb_per_token"] == pytest.approx(25.0 * 50.0)
    assert quarter["shrink_vs_lfu"] == pytest.approx(1250.0 / 900.0, abs=1e-3)
    assert half["lfu_coded_ceiling"] == pytest.approx(50.0 / 9.0, abs=1e-3)  # 450 MB at 50 GB/s
    assert half["reachable_online"] and quarter["reachable_online"]


def test_a_target_no_step_can_meet_has_a_zero_budget():
    doc, summary = _doc(none_tok_s=150.0)  # 6.7 ms a token: 2x allows 3.3 ms, under the 5 ms resident step
    quarter = ceilings(doc, summary)[1]
    assert quarter["allowed_mb_per_token"] == 0.0 and not quarter["reachable_online"]
    assert "lfu_coded_ceiling" not in quarter


def test_the_committed_records(tmp_path):
    main(["--out", str(tmp_path)])
    rows = json.loads((tmp_path / "target_ceiling.json").read_text())["rows"]
    assert {(r["twin"], r["cache_fraction"]) for r in rows} == {
        (t, f) for t in ("deepseek-v2-lite", "phi-mini-moe", "qwen3-30b-a3b") for f in (0.5, 0.25)
    }
    for r in rows:
        assert r["belady_ceiling"] >= r["lfu_ceiling"] > 1.0 and r["belady_ceiling"] >= r["lru_ceiling"] > 1.0
        assert r["lfu_coded_ceiling"] > r["lfu_ceiling"]
    assert "| qwen3-30b-a3b | 25% | 2× |" in (tmp_path / "target_ceiling.md").read_text()
    assert (tmp_path / "target_ceiling.png").stat().st_size > 10_000


def test_huffman_lengths_and_the_entropy_bound():
    counts = torch.zeros(256, dtype=torch.int64)
    counts[[3, 4, 5]] = torch.tensor([1, 1, 2])
    assert huffman_mean_bits(counts) == pytest.approx(1.5)  # codes 2, 2, 1 bits
    assert entropy_bits(counts) == pytest.approx(1.5)
    one = torch.zeros(256, dtype=torch.int64)
    one[7] = 10
    assert huffman_mean_bits(one) == 1.0 and entropy_bits(one) == 0.0
    skew = torch.zeros(256, dtype=torch.int64)
    skew[:6] = torch.tensor([60, 20, 10, 5, 3, 2])
    h, m = entropy_bits(skew), huffman_mean_bits(skew)
    assert h <= m < h + 1


def test_exponent_counts_read_the_bf16_exponent_byte():
    x = torch.tensor([1.0, -1.0, 2.0, 0.5, 0.75])  # exponents 127, 127, 128, 126, 126
    c = exponent_counts(x)
    assert (c[127], c[128], c[126], int(c.sum())) == (2, 1, 2, 5)


def test_trained_and_random_experts_code_to_about_two_thirds():
    for tensors in (builtin_experts(), random_expert(0.02, shape=(3, 64, 256))):
        a = measure("x", tensors)["groups"]["all"]
        assert 2.0 < a["entropy_bits"] <= a["huffman_bits"] < 3.5
        assert 0.6 < a["ratio_huffman"] < 0.72


def test_a_fixed_code_escapes_the_rare_exponents():
    from bench.expert_entropy import fixed_code_ratio

    counts = torch.zeros(256, dtype=torch.int64)
    counts[:16] = 100
    counts[16] = 40  # 2^4 - 1 = 15 codes: the 16th and 17th exponents escape
    ratio, escaped = fixed_code_ratio(counts, bits=4, escape_bits=48)
    assert escaped == pytest.approx(140 / 1640)
    assert ratio == pytest.approx(12 / 16 + escaped * 3)
    a = measure("x", builtin_experts())["groups"]["all"]
    assert a["ratio_huffman"] < a["ratio_fixed4"] < 0.76 and a["fixed4_escaped"] < 1e-3
