"""`bench/coded_experts.py`: the coded expert weights decode to the same bits (the reference decoder here, the
Triton kernel in its interpreter and on a GPU), the exponent code is a prefix code within MAX_BITS, and a
coded expert is about two thirds of its bf16 bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interpreted import needs_triton, run_interpreted

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


from bench.coded_experts import (  # noqa: E402
    LANES,
    MAX_BITS,
    STEPS,
    _canonical,
    _huffman_lengths,
    decode_torch,
    encode,
    main,
)


def _weights(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_the_reference_decoder_gives_back_every_bit():
    w = _weights(2 * LANES * STEPS + 777).reshape(-1, 1)  # a tail that pads the last block
    w[3], w[4], w[5], w[6] = 0.0, float("inf"), float("nan"), -3.0e38
    w[7] = torch.tensor(1e-40).to(torch.bfloat16)  # a subnormal: exponent 0
    c = encode(w)
    assert c.blocks == 3 and c.numel == w.numel()
    assert _same_bits(decode_torch(c), w)


def test_a_tensor_of_one_exponent_and_a_2d_shape():
    w = torch.full((64, 48), 0.5, dtype=torch.bfloat16)
    w[::7] = -0.75  # the same exponent, other sign and mantissa
    assert _same_bits(decode_torch(encode(w)), w)


def test_the_code_is_a_length_limited_prefix_code():
    counts = np.zeros(256, dtype=np.int64)
    counts[:24] = 2 ** np.arange(24)  # a plain Huffman code would be 23 bits deep
    lengths = _huffman_lengths(counts)
    used = np.flatnonzero(lengths)
    assert set(used) == set(range(24)) and lengths.max() <= MAX_BITS
    assert sum(2.0 ** -lengths[s] for s in used) <= 1.0  # Kraft: decodable
    codes = _canonical(lengths)
    words = [format(int(codes[s]), f"0{int(lengths[s])}b") for s in used]
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # no code prefixes another
    assert lengths[23] <= lengths[0]  # the commonest symbol never gets the longer code


def test_a_coded_expert_is_about_two_thirds_of_its_bytes():
    w = _weights(16 * LANES * STEPS)
    c = encode(w)
    assert 0.6 < c.nbytes() / (2 * w.numel()) < 0.72


def test_the_cli_checks_its_round_trip(tmp_path):
    main(["--device", "cpu", "--weights", "200000", "--experts", "1", "--out", str(tmp_path)])
    rec = json.loads((tmp_path / "coded_experts.json").read_text())
    assert (
        rec["reference_exact"] is True and rec["weights"] == 200000 and rec["coded_bytes"] < rec["bf16_bytes"]
    )


@needs_triton
def test_the_decode_kernel_in_the_triton_interpreter(tmp_path):
    run_interpreted(
        tmp_path,
        """
        import torch
        from bench.coded_experts import LANES, STEPS, decode_triton, encode
        g = torch.Generator().manual_seed(1)
        w = (torch.randn(LANES * STEPS + 1000, generator=g) * 0.02).to(torch.bfloat16)
        w[5], w[6], w[7] = 0.0, float("inf"), -3.5e38
        got = decode_triton(encode(w))
        assert torch.equal(got.view(torch.int16), w.view(torch.int16))
        print("ok")
        """,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_decode_kernel_on_the_gpu():
    from bench.coded_experts import decode_triton

    w = _weights(3 * 768 * 2048)  # one Qwen3-30B-A3B expert
    got = decode_triton(encode(w).to("cuda"))
    assert _same_bits(got.cpu(), w)
