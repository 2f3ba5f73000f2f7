"""Does the engine compute what transformers computes, at a real model's width, on the GPU?

    python bench/agreement.py --preset mixtral-8x7b --layers 4 --dtype float32 --out bench/results

A random-weight model of the preset's shape (its first `--layers` layers, full width) is built on the
GPU; the unmodified transformers forward (every expert back in its module) and the engine (captured
decode steps; every expert resident, then half of them with the `none` policy) decode the same
teacher-forced tokens. Reported per engine set-up: steps whose argmax equals the plain forward's, the
largest absolute logit difference and the logits' spread (std), so the difference reads against the
scale. In float32 the paths must agree to rounding; in bfloat16 a deep random model can flip argmaxes
between any two valid orders of summation, which `--dtype bfloat16` measures. JSON under `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name, plain_logits  # noqa: E402
from engine.model.loader import CacheBudget, build_synthetic, replace_cache  # noqa: E402
from engine.model.presets import preset_config  # noqa: E402
from engine.runner.runner import ModelRunner  # noqa: E402


@torch.inference_mode()
def engine_logits(om, prompt: list[int], feed: list[int]) -> torch.Tensor:
    runner = ModelRunner(om, rows=1, max_len=len(prompt) + len(feed) + 8)
    out = []
    logits = runner.prefill(0, prompt)
    pos = len(prompt)
    for tok in feed:
        out.append(logits.float().cpu())
        logits = runner.decode([tok], [pos])[0]
        pos += 1
    if om.device.type == "cuda":
        torch.cuda.synchronize()
    runner.after_step()
    assert runner.graph_failure is None, runner.graph_failure
    return torch.stack(out), dict(runner.steps)


def compare(want: torch.Tensor, got: torch.Tensor) -> dict:
    return {
        "steps": want.shape[0],
        "same_argmax": int((want.argmax(-1) == got.argmax(-1)).sum()),
        "max_abs_diff": float((want - got).abs().max()),
        "logit_std": float(want.std()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mixtral-8x7b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--embed-std", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--smoke", action="store_true", help="a shrunken width on the CPU, to test this script")
    args = ap.parse_args()
    dev = torch.device("cpu" if args.smoke else "cuda")
    dtype = getattr(torch, args.dtype)
    shrink = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    cfg = preset_config(args.preset, num_hidden_layers=args.layers, **(shrink if args.smoke else {}))
    om = build_synthetic(
        cfg, dev, dtype, CacheBudget(fraction=1.0), name=args.preset, embed_std=args.embed_std
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (64 + args.tokens,), generator=gen).tolist()
    prompt, feed = ids[:64], ids[64:]
    replace_cache(om, CacheBudget(gigabytes=0.0))
    want = plain_logits(om, prompt, feed)
    result = {
        "preset": args.preset,
        "layers": args.layers,
        "dtype": args.dtype,
        "device": device_name(dev),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": "python " + " ".join(sys.argv),
        "engine": {},
    }
    for fraction in (1.0, 0.5):
        cache = replace_cache(om, CacheBudget(fraction=fraction))
        if fraction >= 1.0:
            cache.load_all()
        got, steps = engine_logits(om, prompt, feed)
        result["engine"][f"cache_{fraction:g}"] = {**compare(want, got), "graph_steps": steps}
        print(
            f"{args.preset} x{args.layers} {args.dtype} cache {fraction:g}: {result['engine'][f'cache_{fraction:g}']}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"agreement_{args.preset.replace('-', '_')}_{args.dtype}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
