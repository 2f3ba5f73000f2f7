"""Command line for the predictor workflow: `collect`, `train`, `evaluate`, `simulate` (mounted as
`moe-prefetch ...`).

Arguments are parsed only when a command runs; importing this module builds the Typer app and nothing else.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Collect routing traces, train per-layer pre-attention predictors, evaluate them.",
    no_args_is_help=True,
)
console = Console()


class Loss(StrEnum):
    mse = "mse"
    wbce = "wbce"
    rank_bce = "rank_bce"
    focal = "focal"


class TargetMetric(StrEnum):
    resident = "resident"
    hit = "hit"


class Split(StrEnum):
    heldout = "heldout"
    all = "all"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


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

    _setup_logging(verbose)
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
    from predictors.traces import TraceSet
    from predictors.train import train_bank

    _setup_logging(verbose)
    if arch not in (1, 2):
        raise typer.BadParameter("1 or 2", param_hint="--arch")
    ts = TraceSet(traces)
    bank, report = train_bank(
        ts,
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
    save_bundle(out, bank, bundle_manifest(ts.manifest, report))
    m = report["heldout_mean"]
    console.print(
        f"[green]bundle[/green] {out}: held-out mean over {len(bank)} layers: recall@k "
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

    _setup_logging(verbose)
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


def _floats(text: str | None, what: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"a comma-separated list of numbers, got {text!r}", param_hint=what
        ) from None


def _names(text: str | None, known: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in (text or "").split(",") if v.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise typer.BadParameter(f"unknown {', '.join(bad)}; choose from {', '.join(known)}", param_hint=what)
    return names


@app.command()
def simulate(
    traces: Annotated[
        Path | None, typer.Option(help="Trace directory written by `collect` (replayed as batch-1 decode).")
    ] = None,
    routing: Annotated[
        Path | None,
        typer.Option(help="Routing recording written with MOE_RECORD_ROUTING (none and oracle only)."),
    ] = None,
    predictors: Annotated[
        Path | None, typer.Option(help="Predictor bundle for exact, overprovision, top1 and adaptive.")
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated MOE_POLICY values (default: every one the input and bundle allow)."
        ),
    ] = None,
    eviction: Annotated[str, typer.Option(help="Comma-separated eviction orders: lru, lfu, belady.")] = (
        "lru,lfu,belady"
    ),
    fractions: Annotated[
        str, typer.Option(help="Cache sizes as shares of all routed experts, comma-separated.")
    ] = "0.1,0.25,0.5,0.75,1.0",
    cache_gb: Annotated[str | None, typer.Option(help="Cache sizes in GB, comma-separated.")] = None,
    expert_mb: Annotated[
        float | None, typer.Option(help="One routed expert's size in MB (1e6 bytes).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint folder or preset (qwen3-30b-a3b, ...) giving the expert size and shape."
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Expert dtype for --model: bf16, fp16 or float32.")] = "bf16",
    overprovision: Annotated[
        int | None, typer.Option(help="k' of overprovision (default ceil(1.5 k)).")
    ] = None,
    adaptive_target: Annotated[float, typer.Option(help="Mass target of adaptive.")] = 0.9,
    adaptive_max: Annotated[
        int | None, typer.Option(help="Most experts adaptive fetches (default 2 k).")
    ] = None,
    lfu_half_life: Annotated[
        float, typer.Option(help="LFU decay: a use this many tokens ago counts half (0: no decay).")
    ] = 64.0,
    bandwidth_gbs: Annotated[
        float, typer.Option(help="Host->device GB/s of the time model (H200 pinned: 55).")
    ] = 55.0,
    step_ms: Annotated[
        float, typer.Option(help="Resident decode step in ms (Qwen3-30B-A3B shape on an H200: 4.6).")
    ] = 4.6,
    target_hit: Annotated[
        float | None, typer.Option(help="Print the smallest cache reaching this hit rate, e.g. 0.9.")
    ] = None,
    target_metric: Annotated[
        TargetMetric,
        typer.Option(
            help="resident: hits on experts cached before the step's prefetch; hit: the engine's "
            "hit rate, prefetch hits included."
        ),
    ] = TargetMetric.resident,
    max_tokens: Annotated[int | None, typer.Option(help="Replay only the first N steps.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write simulate.json and simulate.png here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Replay recorded routing through a model of the engine's expert cache: hit rate, misses, bytes copied and
    modelled time per token for each cache size x eviction x prefetch policy."""
    from engine.api.errors import EngineError
    from engine.api.policies import POLICIES
    from predictors.eviction import EVICTIONS
    from predictors.sim_report import (
        SweepConfig,
        capacity_lines,
        model_shape,
        result_table,
        sweep,
        write_outputs,
    )
    from predictors.simulate import (
        NEEDS_INPUTS,
        SimulateError,
        TimeModel,
        cache_sizes,
        load_recording,
        load_traces,
        policy_runs,
    )

    _setup_logging(verbose)
    if (traces is None) == (routing is None):
        raise typer.BadParameter("give exactly one of --traces DIR or --routing FILE", param_hint="--traces")
    if target_hit is not None and not 0.0 < target_hit <= 1.0:
        raise typer.BadParameter("a hit rate in (0, 1]", param_hint="--target-hit")
    evictions = _names(eviction, EVICTIONS, "--eviction")
    asked = _names(policies, POLICIES, "--policies")
    try:
        shape = model_shape(model, dtype) if model else None
        if traces is not None:
            w = load_traces(traces, max_tokens)
        else:
            w = load_recording(
                routing, shape.num_experts if shape else None, shape.top_k if shape else None, max_tokens
            )
        if shape and (shape.num_layers, shape.num_experts, shape.top_k) != (
            w.num_layers,
            w.num_experts,
            w.top_k,
        ):
            raise SimulateError(
                f"--model {model}: {shape.num_layers} MoE layers x {shape.num_experts} experts, top-{shape.top_k}; "
                f"the input has {w.num_layers} x {w.num_experts}, top-{w.top_k}"
            )
        expert_bytes = round(expert_mb * 1e6) if expert_mb else (shape.expert_bytes if shape else None)
        bank = manifest = None
        if predictors is not None:
            from engine.prefetch.bundle import check_fingerprint, load_bundle

            bank, manifest = load_bundle(predictors)
            if w.fingerprint is not None:
                check_fingerprint(predictors, manifest, w.fingerprint, what=f"the input {w.source}")
        if not asked:
            asked = [
                p
                for p in POLICIES
                if (p not in NEEDS_INPUTS or w.inputs is not None)
                and (p in ("none", "crosslayer", "oracle") or bank is not None)
            ]
        runs = policy_runs(
            w,
            asked,
            bank,
            manifest,
            overprovision=overprovision,
            adaptive_target=adaptive_target,
            adaptive_max=adaptive_max,
        )
        sizes = cache_sizes(
            w, _floats(fractions, "--fractions"), _floats(cache_gb, "--cache-gb"), expert_bytes
        )
        cfg = SweepConfig(
            evictions=tuple(evictions) or EVICTIONS,
            lfu_half_life=lfu_half_life,
            time=TimeModel(step_ms=step_ms, bandwidth_gbs=bandwidth_gbs),
            target_hit=target_hit,
            target_metric="resident_hit_rate" if target_metric is TargetMetric.resident else "hit_rate",
            progress=progress,
        )
        doc = sweep(w, sizes, runs, expert_bytes, cfg)
    except (SimulateError, EngineError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]simulate:[/red] {err}")
        raise typer.Exit(2) from None
    wide = console if console.is_terminal else Console(width=160)  # a pipe or file gets whole rows
    wide.print(result_table(doc))
    if expert_bytes:
        wide.print(
            f"expert {expert_bytes / 1e6:.2f} MB; overlap ms = max(step {step_ms} ms, MB/tok / {bandwidth_gbs} GB/s) "
            "(copies hidden behind compute); serial ms = step + misses x expert / bandwidth (misses stall)"
        )
    else:
        console.print("no expert size (--expert-mb or --model): bytes and modelled times left out")
    for line in capacity_lines(doc):
        wide.print(line)
    if out is not None:
        js, png = write_outputs(doc, out)
        console.print(f"[green]json[/green] {js}\n[green]plot[/green] {png}")
