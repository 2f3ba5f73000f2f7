"""How far lossless coding could shrink the bytes an offloaded expert costs over PCIe: the entropy of bf16
expert weights' exponents.

    python bench/expert_entropy.py            # -> bench/results/expert_entropy.json

A bf16 weight is 1 sign, 8 exponent and 7 mantissa bits. Trained (and normally initialised) weights use few
exponents, so the exponent byte carries ~2.6 bits of information: coding it with a Huffman code per tensor
and keeping sign and mantissa as they are is lossless (outputs unchanged) and makes an expert
(8 + mean code length) / 16 of its size. This measures that ratio on
- the built-in model's trained experts (`engine/model/assets/model.safetensors`, per projection), and
- random N(0, std) weights at the Qwen3-30B-A3B expert shape (the benchmarks' random-weight models; std 0.02),
giving the exponent entropy, the Huffman code's mean length (what a real code achieves) and the size ratio,
and the ratio of a fixed 4-bit exponent code with escapes (simpler to decode on a GPU, larger).
Issue #17's 2x target at a 25% cache needs the copies at 0.62-0.71 of what LFU moves
(`bench/target_ceiling.py`); this says what a lossless code would supply. A GPU decoder (the host copies
coded bytes, the GPU expands them into the cache slot) is not built; this is the measurement that motivates
it. Imports torch, safetensors and `bench.coded_experts` (its Huffman code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "engine" / "model" / "assets" / "model.safetensors"
QWEN3_EXPERT = (3, 768, 2048)  # gate, up, down of one Qwen3-30B-A3B expert: 3 x 768 x 2048 weights


def exponent_counts(t: torch.Tensor) -> torch.Tensor:
    """[256] int64: how many of `t`'s bf16 values have each exponent byte."""
    bits = t.detach().to(torch.bfloat16).contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.bincount(((bits >> 7) & 0xFF).flatten(), minlength=256)


def entropy_bits(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def huffman_mean_bits(counts: torch.Tensor) -> float:
    """Mean code length of the Huffman code the engine's coded experts use (`engine.experts.coded`: at most
    MAX_BITS bits a code, 1 bit for a single symbol) over the symbols with non-zero counts."""
    from engine.experts.coded import huffman_lengths

    c = counts.numpy()
    return float((huffman_lengths(c) * c).sum() / c.sum())


def fixed_code_ratio(counts: torch.Tensor, bits: int = 4, escape_bits: int = 48) -> tuple[float, float]:
    """(coded size / bf16 size, escaped share) of a fixed-width exponent code: the 2^bits - 1 most common
    exponents get a code each, the last code marks an escape, and each escaped weight is also stored aside
    (`escape_bits`: a 32-bit position and the raw 16 bits). Every code decodes independently: a GPU reads it
    at full speed, where a Huffman code needs the offsets of its blocks."""
    p = counts.sort(descending=True).values.double() / counts.sum()
    escaped = float(p[2**bits - 1 :].sum())
    return (8 + bits) / 16 + escaped * escape_bits / 16, escaped


def measure(name: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Per tensor group and in all: exponent entropy, Huffman mean length, coded size / bf16 size."""
    groups: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        g = key.rsplit(".", 2)[-2] if key.endswith(".weight") else key
        groups[g] = groups.get(g, torch.zeros(256, dtype=torch.int64)) + exponent_counts(t)
    groups["all"] = sum(groups.values())
    out = {"source": name, "weights": int(groups["all"].sum()), "groups": {}}
    for g, c in groups.items():
        h, m = entropy_bits(c), huffman_mean_bits(c)
        fixed, escaped = fixed_code_ratio(c)
        out["groups"][g] = {
            "exponents_used": int((c > 0).sum()),
            "entropy_bits": round(h, 3),
            "huffman_bits": round(m, 3),
            "ratio_entropy": round((8 + h) / 16, 4),
            "ratio_huffman": round((8 + m) / 16, 4),
            "ratio_fixed4": round(fixed, 4),
            "fixed4_escaped": escaped,
        }
    return out


def builtin_experts(path: Path = BUILTIN) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if ".experts." in k}


def random_expert(std: float, seed: int = 0, shape=QWEN3_EXPERT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * std
    return {f"experts.0.{p}.weight": w[i] for i, p in enumerate(("gate_proj", "up_proj", "down_proj"))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--std", type=float, default=0.02, help="std of the random expert")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    rows = [
        measure("built-in model, trained experts (engine/model/assets)", builtin_experts()),
        measure(f"random N(0, {args.std:g}) at the Qwen3-30B-A3B expert shape", random_expert(args.std)),
    ]
    doc = {
        "kind": "expert_entropy",
        "command": "python bench/expert_entropy.py" + (" " + " ".join(argv) if argv else ""),
        "what": "lossless size of bf16 expert weights with the exponent byte Huffman-coded per tensor group, "
        "sign and mantissa raw: (8 + code bits) / 16",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "expert_entropy.json").write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        a = r["groups"]["all"]
        print(
            f"{r['source']}: {r['weights']:,} weights, exponent entropy {a['entropy_bits']:.2f} bits, Huffman "
            f"{a['huffman_bits']:.2f} -> {a['ratio_huffman']:.3f} of bf16 (entropy bound {a['ratio_entropy']:.3f}); "
            f"a fixed 4-bit code with escapes {a['ratio_fixed4']:.3f} ({a['fixed4_escaped']:.1e} escaped)"
        )


if __name__ == "__main__":
    main()
