"""The soak's model on disk: a random-weight checkpoint of a real shape and quick predictor bundles for it.

    python bench/soak_checkpoint.py --shape qwen3 --layers 12 --dtype bfloat16 --device cuda \
        --out .cache/serve_soak/qwen3-l12-bfloat16 --bundle .cache/serve_soak/qwen3-l12-bfloat16-predictors \
        --distances 0,2

`bench/serve_soak.py` runs this as a child process, so the CUDA memory of the build is gone (the process
is) before any server starts, and the soak's own process never touches the GPU. The checkpoint is what
`engine/model/loader.py` reads: config.json, generation_config.json, safetensors shards (`save_pretrained`),
and the built-in tokenizer (4096 ids, chat template). Weights are drawn on `--device` by transformers'
own init (normal, std 0.02) from a fixed seed; the token embeddings are redrawn with `--embed-std`
(1.0 by default, as `engine.model.loader.build_synthetic` explains: with 0.02 a random model routes every
token of a layer to a dozen experts, which any cache holds, and the soak would never miss).

The bundles are trained with the project's own `predictors.collect` and `predictors.train.train_bank`
on a few dozen prompts (traced once), from the model already in memory (its fingerprint is the
checkpoint's: it hashes the bf16-rounded routers): one per `--distances` entry d, at `bundle_path(--bundle,
d)`. d = 0 names a layer's experts from its own input; d > 0 is a lookahead bundle, trained as
`moe-prefetch train --distance d` trains one (`predictors.lookahead.LookaheadTraces`, the manifest's
`distance`), from which the server prefetches d MoE layers early. Each is reused when its `soak_spec.json`
(written last; a bundle's has its distance) matches.
The last line on stdout is a JSON summary for the caller.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILE = "soak_spec.json"
SPEC_VERSION = 1
TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=16,
    num_experts_per_tok=4,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
SHAPES = ("qwen3", "deepseek", "tiny")


def shape_config(shape: str, layers: int, vocab_size: int, eos: int, pad: int):
    """The transformers config of a soak shape with the built-in tokenizer's vocabulary and special ids."""
    from engine.model.presets import preset_config

    special = dict(vocab_size=vocab_size, eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    if shape == "qwen3":
        return preset_config("qwen3-30b-a3b", num_hidden_layers=layers, **special)
    if shape == "deepseek":
        return preset_config("deepseek-v2-lite", num_hidden_layers=layers, **special)
    if shape == "tiny":
        return preset_config("qwen3-30b-a3b", num_hidden_layers=layers, **TINY, **special)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def config_summary(cfg) -> dict:
    keys = (
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "moe_intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_experts",
        "n_routed_experts",
        "n_shared_experts",
        "num_experts_per_tok",
        "first_k_dense_replace",
        "vocab_size",
        "eos_token_id",
    )
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}


def soak_tokenizer(path: Path | None = None):
    """The built-in tokenizer, or (`--tokenizer`) another byte-level tokenizer.json with the built-in chat
    template and its special tokens (`<|im_end|>` ends a turn, `<|endoftext|>` pads): for measurements
    whose cost grows with the vocabulary, such as the grammar mask at 151k ids."""
    from engine.model.builtin import CHAT_TEMPLATE, builtin_tokenizer

    if path is None:
        tok = builtin_tokenizer()
    else:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(path), eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
            chat_template=CHAT_TEMPLATE,
        )  # fmt: skip
        missing = [t for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>") if t not in tok.get_vocab()]
        if missing:
            raise SystemExit(f"--tokenizer {path}: no special tokens {missing}")
    tok.model_max_length = 32768  # the server's context window is MOE_MAX_MODEL_LEN, not the tokenizer's
    return tok


def _read_spec(path: Path) -> dict | None:
    try:
        return json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_spec(path: Path, spec: dict) -> None:
    tmp = path / (SPEC_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=1) + "\n")
    tmp.replace(path / SPEC_FILE)


def build_model(cfg, dtype_name: str, device: str, embed_std: float, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if model.get_input_embeddings().weight.device.type != torch.device(device).type:
        model = model.to(device)  # a transformers version that builds on the CPU whatever the default device
    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        model.get_input_embeddings().weight.normal_(0.0, embed_std, generator=gen)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"non-finite weights after init: {bad[:3]}")
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def write_checkpoint(model, tok, out: Path, spec: dict, shard: str) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), max_shard_size=shard)
    tok.save_pretrained(str(out))
    _write_spec(out, spec)


def load_for_tracing(path: Path, dtype_name: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype_name))
    return model.to(device).eval()


def bundle_path(base: Path, distance: int) -> Path:
    """Where the bundle of a lookahead distance lives: `base` for 0, `base`-ahead<d> for d > 0."""
    return base if distance == 0 else base.parent / f"{base.name}-ahead{distance}"


def bundle_spec(spec: dict, distance: int) -> dict:
    """A bundle's spec: the checkpoint's and its distance, so no bundle is reused at another distance."""
    return {**spec, "distance": distance}


def train_bundles(
    model, tok, prompts: list[str], outs: dict[int, Path], work: Path, spec: dict, device: str
) -> dict:
    """Traces of `model` over `prompts` (at most ~4k tokens), then for each {distance: folder} of `outs`
    one small predictor per MoE layer (but the last `distance`) naming the experts `distance` layers on."""
    from predictors.bundle import bundle_manifest, save_bundle
    from predictors.collect import collect
    from predictors.lookahead import LookaheadTraces
    from predictors.traces import TraceSet
    from predictors.train import train_bank

    traces_dir = work / "traces"
    if traces_dir.exists():
        shutil.rmtree(traces_dir)
    t0 = time.perf_counter()
    manifest = collect(
        model,
        tok,
        prompts,
        traces_dir,
        max_samples=4096,
        max_prompt_tokens=256,
        resume=False,
        progress=False,
        chat_template=True,
    )
    t_collect = time.perf_counter() - t0
    traces = TraceSet(traces_dir)
    info = {}
    for d, out in sorted(outs.items()):
        t1 = time.perf_counter()
        data = LookaheadTraces(traces, d) if d else traces  # as `moe-prefetch train --distance d`
        bank, report = train_bank(
            data,
            arch=2,
            loss="wbce",
            hidden=256,
            epochs=2,
            batch_size=512,
            patience=1,
            holdout_frac=0.2,
            device=device,
            progress=False,
        )
        if out.exists():
            shutil.rmtree(out)
        save_bundle(out, bank, bundle_manifest(traces.manifest, report, d, data.layer_ids))
        _write_spec(out, bundle_spec(spec, d))
        info[d] = {
            "collect_s": round(t_collect, 2),
            "train_s": round(time.perf_counter() - t1, 2),
            "samples": manifest["samples"],
            "heldout_recall_at_k": report["heldout_mean"]["recall_at_k"],
        }
    shutil.rmtree(traces_dir, ignore_errors=True)
    return info


def routing_spread(model, tok, prompts: list[str], device: str) -> dict:
    """Distinct experts each MoE layer routes to over a few prompts: shows whether small caches will miss."""
    import torch

    from engine.model.model_map import find_moe_layers

    layers = find_moe_layers(model)
    seen: list[set[int]] = [set() for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):

        def hook(_m, _inp, out, i=i):
            seen[i].update(out[2].reshape(-1).tolist())

        hooks.append(layer.router.register_forward_hook(hook))
    tokens = 0
    try:
        with torch.inference_mode():
            for text in prompts[:8]:
                ids = tok(text)["input_ids"][:128]
                tokens += len(ids)
                model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    experts = int(layers[0].router.weight.shape[0])
    counts = [len(s) for s in seen]
    return {"tokens": tokens, "experts": experts, "distinct_per_layer": counts}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--embed-std", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="predictor bundle folder (none: no bundle); of distance 0, d > 0 at <bundle>-ahead<d>",
    )
    ap.add_argument(
        "--distances",
        default="0",
        help="with --bundle: the lookahead distances to train a bundle for, e.g. 0,2 (default: 0)",
    )
    ap.add_argument("--prompts", type=Path, default=None, help="JSON list of prompt texts for the traces")
    ap.add_argument("--shard", default="2GB", help="max_shard_size of save_pretrained")
    ap.add_argument(
        "--tokenizer", type=Path, default=None, help="a tokenizer.json (default: the built-in one)"
    )
    args = ap.parse_args(argv)
    try:
        distances = sorted({int(d) for d in args.distances.split(",")})
    except ValueError:
        ap.error(f"--distances: comma-separated integers, got {args.distances!r}")
    if distances[0] < 0 or distances[-1] >= args.layers:
        ap.error(f"--distances: 0 to {args.layers - 1}, got {args.distances!r}")
    sys.path.insert(0, str(ROOT))

    t0 = time.perf_counter()
    tok = soak_tokenizer(args.tokenizer)
    cfg = shape_config(args.shape, args.layers, len(tok), tok.eos_token_id, tok.pad_token_id)
    spec = {
        "version": SPEC_VERSION,
        "shape": args.shape,
        "layers": args.layers,
        "dtype": args.dtype,
        "embed_std": args.embed_std,
        "seed": args.seed,
        "config": config_summary(cfg),
        "tokenizer": str(args.tokenizer) if args.tokenizer else "built-in",
    }
    prompts = json.loads(args.prompts.read_text()) if args.prompts else ["Hello, how are you today?"] * 8
    summary: dict = {"config": spec["config"], "checkpoint": str(args.out)}
    model = None
    if _read_spec(args.out) == spec:
        summary["checkpoint_reused"] = True
    else:
        model = build_model(cfg, args.dtype, args.device, args.embed_std, args.seed)
        summary["build_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        write_checkpoint(model, tok, args.out, spec, args.shard)
        summary["write_s"] = round(time.perf_counter() - t1, 2)
        summary["checkpoint_reused"] = False
    summary["checkpoint_gb"] = round(sum(f.stat().st_size for f in args.out.glob("*.safetensors")) / 1e9, 3)
    if args.bundle is not None:
        outs = {d: bundle_path(args.bundle, d) for d in distances}
        stale = {d: out for d, out in outs.items() if _read_spec(out) != bundle_spec(spec, d)}
        info = {}
        if stale:
            if model is None:
                model = load_for_tracing(args.out, args.dtype, args.device)
            work = args.bundle.parent / (args.bundle.name + "-work")
            info = train_bundles(model, tok, prompts, stale, work, spec, args.device)
            shutil.rmtree(work, ignore_errors=True)
        summary["bundles"] = {
            str(d): {"path": str(out), "reused": d not in stale, **({"info": info[d]} if d in info else {})}
            for d, out in outs.items()
        }
        summary["bundle_reused"] = not stale
    if model is not None:
        summary["routing_spread"] = routing_spread(model, tok, prompts, args.device)
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
