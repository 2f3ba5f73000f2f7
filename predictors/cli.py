"""Command line for the predictor workflow: `collect`, `train`, `evaluate`, and `simulate`
(`predictors.simulate_cli`), mounted as `moe-prefetch ...`.

Arguments are parsed only when a command runs; importing this module builds the Typer app and nothing else.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from predictors.simulate_cli import simulate
from predictors.terminal import console, setup_logging

app = typer.Typer(
    help="Collect routing traces, train per-layer pre-attention predictors, evaluate them.",
    no_args_is_help=True,
)


class Loss(StrEnum):
    mse = "mse"
    wbce = "wbce"
    rank_bce = "rank_bce"
    focal = "focal"


class Split(StrEnum):
    heldout = "heldout"
    all = "all"


def _parse_consts(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--loss-param")
        out[key.strip()] = value.strip()
    return out


@app.command()
def collect(
    model: Annotated[
        Path, typer.Option(help="Hugging Face checkpoint directory of an MoE model (with tokenizer).")
    ],
    prompts: Annotated[
        Path,
        typer.Option(
            help="Prompt file: JSONL (text/prompt/instruction/question, messages or "
            "turns field), CSV (MMLU headerless rows or a 'question' column), "
            "or a directory of such CSVs."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Trace directory to write (shards + manifest.json + routers).")],
    max_samples: Annotated[
        int | None, typer.Option(help="Stop after this many tokens (samples) in total.")
    ] = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="Cut each prompt to this many tokens.")] = 512,
    shard_size: Annotated[
        int, typer.Option(help="Samples buffered in memory before a shard is written.")
    ] = 65536,
    batch_size: Annotated[
        int, typer.Option(help="Prompts per forward pass (right-padded; 1 avoids padding).")
    ] = 1,
    device: Annotated[str, typer.Option(help="Device to run the model on (cpu, cuda, cuda:1, ...).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weights dtype to load: auto, bf16, fp16 or float32.")] = "auto",
    x_dtype: Annotated[
        str, typer.Option(help="Storage dtype of the layernorm outputs: bf16 or fp16.")
    ] = "bf16",
    chat_template: Annotated[
        bool,
        typer.Option(
            help="Wrap each prompt as a user message with the tokenizer's chat template (when it has one)."
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue a trace directory of the same model instead of starting over.")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Run the model over the prompts and record, per MoE layer, the input_layernorm output, the router's
    affinity scores and its true top-k."""
    from predictors.collect import collect as run_collect
    from predictors.collect import load_model_for_tracing, read_prompts

    setup_logging(verbose)
    if x_dtype not in ("bf16", "fp16"):
        raise typer.BadParameter("bf16 or fp16", param_hint="--x-dtype")
    texts = read_prompts(prompts)
    loaded, tokenizer = load_model_for_tracing(model, device, dtype)
    manifest = run_collect(
        loaded,
        tokenizer,
        texts,
        out,
        max_samples=max_samples,
        max_prompt_tokens=max_prompt_tokens,
        shard_size=shard_size,
        resume=resume,
        progress=progress,
        chat_template=chat_template,
        batch_size=batch_size,
        x_dtype=x_dtype,
    )
    console.print(
        f"[green]traces[/green] {out}: {manifest['samples']} samples from {manifest['prompts_done']} "
        f"of {len(texts)} prompts, {len(manifest['shards'])} shards, {manifest['num_moe_layers']} MoE "
        f"layers, top-{manifest['top_k']} of {manifest['num_experts']}"
    )


@app.command()
def train(
    traces: Annotated[Path, typer.Option(help="Trace directory written by `collect`.")],
    out: Annotated[
        Path, typer.Option(help="Bundle directory to write (predictors.safetensors + manifest.json).")
    ],
    arch: Annotated[
        int, typer.Option(help="1: Linear-BatchNorm-GELU-Dropout-Linear; 2: Linear-SiLU-Linear.")
    ] = 1,
    loss: Annotated[
        Loss, typer.Option(help="Training loss (paper pairing: arch 1 + rank_bce, arch 2 + wbce).")
    ] = Loss.rank_bce,
    loss_param: Annotated[
        list[str] | None,
        typer.Option(
            help="Override a loss constant, NAME=VALUE (repeatable), "
            "e.g. lam=0.3, margin=0.1, w_top=3.0, gamma=2."
        ),
    ] = None,
    hidden: Annotated[int, typer.Option(help="Predictor hidden size.")] = 2048,
    distance: Annotated[
        int,
        typer.Option(
            help="Lookahead: predictor i names MoE layer i+DISTANCE's experts from layer i's input, so a "
            "prefetch has DISTANCE layers of compute to hide behind (0: the same layer)."
        ),
    ] = 0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per layer.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Samples per optimizer step.")] = 1024,
    lr: Annotated[
        float, typer.Option(help="Peak AdamW learning rate (linear warmup, then cosine to 0).")
    ] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    holdout_frac: Annotated[
        float, typer.Option(help="Fraction of the prompts held out for early stopping and evaluation.")
    ] = 0.1,
    patience: Annotated[
        int, typer.Option(help="Stop a layer after this many epochs without a better held-out recall@k.")
    ] = 3,
    device: Annotated[
        str | None, typer.Option(help="Training device (default: cuda when present, else cpu).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the shuffling.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Train one predictor per MoE layer and write a bundle."""
    from predictors.bundle import bundle_manifest, save_bundle
    from predictors.lookahead import LookaheadTraces
    from predictors.traces import TraceSet
    from predictors.train import train_bank

    setup_logging(verbose)
    if arch not in (1, 2):
        raise typer.BadParameter("1 or 2", param_hint="--arch")
    ts = TraceSet(traces)
    if not 0 <= distance < ts.num_layers:
        raise typer.BadParameter(
            f"0 to {ts.num_layers - 1} (the traces have {ts.num_layers} MoE layers)", param_hint="--distance"
        )
    data = LookaheadTraces(ts, distance) if distance else ts
    bank, report = train_bank(
        data,
        arch,
        loss.value,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        holdout_frac=holdout_frac,
        patience=patience,
        device=device,
        seed=seed,
        progress=progress,
        loss_consts=_parse_consts(loss_param or []),
    )
    save_bundle(out, bank, bundle_manifest(ts.manifest, report, distance, data.layer_ids))
    m = report["heldout_mean"]
    ahead = f", {distance} MoE layers ahead" if distance else ""
    console.print(
        f"[green]bundle[/green] {out}: held-out mean over {len(bank)} layers{ahead}: recall@k "
        f"{100 * m['recall_at_k']:.2f}%, set accuracy {100 * m['set_accuracy']:.2f}%, top-1 "
        f"{100 * m['top1_accuracy']:.2f}%, over-provisioned recall {100 * m['overprov_recall']:.2f}%"
    )


@app.command()
def evaluate(
    predictors: Annotated[Path, typer.Option(help="Bundle directory written by `train`.")],
    traces: Annotated[Path, typer.Option(help="Trace directory of the same model.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full result as JSON here.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw per-layer curves to this PNG.")] = None,
    k_prime: Annotated[int | None, typer.Option(help="Over-provisioning k' (default ceil(1.5 k)).")] = None,
    sweep: Annotated[
        list[int] | None, typer.Option(help="k' values of the recall sweep (repeatable; default k..3k).")
    ] = None,
    split: Annotated[
        Split, typer.Option(help="heldout: the bundle's held-out prompts; all: every sample.")
    ] = Split.heldout,
    device: Annotated[str | None, typer.Option(help="Device (default: cuda when present, else cpu).")] = None,
    latency_iters: Annotated[
        int, typer.Option(help="Timed batch-1 calls per layer for the latency median.")
    ] = 200,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Per-layer and overall set accuracy, recall@k, over-provisioning recall, top-1 and latency, with the
    router, cross-layer and frequency-prior baselines."""
    from engine.prefetch.bundle import load_bundle
    from predictors.evaluate import evaluate as run_evaluate
    from predictors.evaluate import plot_result, result_table
    from predictors.traces import TraceSet

    setup_logging(verbose)
    bank, manifest = load_bundle(predictors)
    result = run_evaluate(
        bank,
        manifest,
        TraceSet(traces),
        split=split.value,
        k_prime=k_prime,
        sweep=sweep,
        device=device,
        latency_iters=latency_iters,
        bundle_path=str(predictors),
    )
    console.print(result_table(result))
    console.print(
        "r@k is the paper's 'exact-match' figure; cross-layer is undefined for the first MoE layer."
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"[green]json[/green] {json_out}")
    if plot:
        console.print(f"[green]plot[/green] {plot_result(result, plot)}")


app.command()(simulate)
