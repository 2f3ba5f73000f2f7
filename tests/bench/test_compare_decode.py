"""bench/compare_decode.py: configurations matched by name, ratios, and a token difference is an error."""

from __future__ import annotations

import json

from bench.compare_decode import compare, main


def run(tok_s: float, tokens: list[int], policy: str = "none") -> dict:
    summary = {"tok_s_median": tok_s, "tok_s_min": tok_s - 1, "tok_s_max": tok_s + 1, "tokens": [tokens]}
    return {
        "configs": [{"policy": policy, "fraction": 0.5, "slots": 3, "summary": summary, "wall_s": 1.0}],
        "batched": {"engine": {"0.5": {"8": {"tok_s_median": 8 * tok_s}}}},
    }


def test_same_tokens_and_the_speed_ratio():
    res = compare(run(100.0, [1, 2, 3]), run(95.0, [1, 2, 3]))
    assert res["same_tokens_everywhere"]
    assert res["configs"][0]["config"] == "none/0.5" and res["configs"][0]["ratio"] == 0.95
    assert res["batched"] == [
        {"fraction": "0.5", "batch": 8, "old_tok_s": 800.0, "new_tok_s": 760.0, "ratio": 0.95}
    ]


def test_configs_only_in_one_run_are_left_out():
    assert compare(run(100.0, [1]), run(100.0, [1], policy="exact"))["configs"] == []


def test_a_changed_token_fails(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(run(100.0, [1, 2, 3])))
    new.write_text(json.dumps(run(100.0, [1, 2, 4])))
    assert main([str(old), str(new), "--out", str(tmp_path / "c.json")]) == 1
    assert json.loads((tmp_path / "c.json").read_text())["configs"][0]["same_tokens"] is False
