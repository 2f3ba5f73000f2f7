"""`bench/coded_experts.py`: its CPU run codes and checks every expert with the engine's codec and writes its
record; on a GPU it also times the decode and fills an `ExpertCache` through plain and coded copies, every slot
with its expert's exact bits. The exponent code it measures is a prefix code within MAX_BITS."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.coded_experts import main  # noqa: E402
from engine.experts.coded import MAX_BITS, canonical_codes, huffman_lengths  # noqa: E402


def test_the_code_is_a_length_limited_prefix_code():
    counts = np.zeros(256, dtype=np.int64)
    counts[:24] = 2 ** np.arange(24)  # a plain Huffman code would be 23 bits deep
    lengths = huffman_lengths(counts)
    used = np.flatnonzero(lengths)
    assert set(used) == set(range(24)) and lengths.max() <= MAX_BITS
    assert sum(2.0 ** -lengths[s] for s in used) <= 1.0  # Kraft: decodable
    codes = canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{int(lengths[s])}b") for s in used]
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # no code prefixes another
    assert lengths[23] <= lengths[0]  # the commonest symbol never gets the longer code


def test_the_cpu_run_checks_every_block_length(tmp_path):
    main(
        [
            "--device",
            "cpu",
            "--weights",
            "65536",
            "--experts",
            "2",
            "--steps",
            "32,128",
            "--out",
            str(tmp_path),
        ]
    )
    rec = json.loads((tmp_path / "coded_experts.json").read_text())
    assert rec["weights_per_expert"] == 65536 and rec["device"] == "cpu"
    assert [c["steps"] for c in rec["codec"]] == [32, 128]
    assert all(c["exact"] is True for c in rec["codec"])
    assert all(0.6 < c["ratio"] < 0.85 for c in rec["codec"])  # sign, mantissa raw; the exponent ~2.6 bits
    assert rec["codec"][1]["ratio"] < rec["codec"][0]["ratio"]  # longer lanes: fewer start words
    assert "fill" not in rec and "decode_ms" not in rec["codec"][0]  # timings only on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_run_fills_exact_slots_with_plain_and_coded_copies(tmp_path):
    main(["--weights", "262144", "--experts", "2", "--steps", "64,256", "--reps", "4", "--slots", "4",
          "--store-experts", "16", "--out", str(tmp_path)])  # fmt: skip
    rec = json.loads((tmp_path / "coded_experts.json").read_text())
    assert all(c["exact"] and 0 < c["decode_ms"] and 0 < c["group_decode_ms"] for c in rec["codec"])
    runs = rec["fill"]["runs"]
    assert [r["coded"] for r in runs] == [False, True, True] and all(r["exact"] for r in runs)
    assert all(0 < r["host_ms_per_expert"] <= r["fill_ms_per_expert"] for r in runs)
