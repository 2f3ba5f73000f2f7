"""The `simulate` command (mounted as `moe-prefetch simulate`): its options, their checks, and what it
prints; the work is `predictors.sim_inputs`, `predictors.simulate` and `predictors.sim_report`.

Arguments are parsed only when the command runs; importing this module imports typer and rich only.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from predictors.terminal import console, setup_logging


class TargetMetric(StrEnum):
    resident = "resident"
    hit = "hit"


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
    eviction: Annotated[
        str,
        typer.Option(
            help="Comma-separated eviction orders: lru, lfu, predicted (lowest predictor score first; needs "
            "--predictors, runs the predictor under every policy), belady."
        ),
    ] = "lru,lfu,belady",
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
    oracle_ahead: Annotated[
        int, typer.Option(help="MoE layers early the oracle issues each layer's routing (MOE_ORACLE_AHEAD).")
    ] = 0,
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
    decision_ms: Annotated[
        float,
        typer.Option(
            help="The clock's host work per segment boundary, ms (fitted on the DeepSeek-V2-Lite twin, H200: 0.277)."
        ),
    ] = 0.277,
    attention_share: Annotated[
        float, typer.Option(help="The clock's share of each layer's resident time before its experts.")
    ] = 0.5,
    host_expert_ms: Annotated[
        float,
        typer.Option(
            help="Hybrid misses on the clock (MOE_HYBRID_MISSES): the host's ms for one expert on one row "
            "while copies run (H200 host, Qwen3-30B-A3B expert: about 0.40); 0: off."
        ),
    ] = 0.0,
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
    from predictors.eviction import DEFAULT_EVICTIONS, EVICTIONS
    from predictors.sim_inputs import default_policies, load_checked_bundle, load_workload
    from predictors.sim_policies import policy_runs, predictor_scores
    from predictors.sim_report import SweepConfig, capacity_lines, result_table, sweep, write_outputs
    from predictors.simulate import SimulateError, TimeModel, cache_sizes

    setup_logging(verbose)
    if (traces is None) == (routing is None):
        raise typer.BadParameter("give exactly one of --traces DIR or --routing FILE", param_hint="--traces")
    if target_hit is not None and not 0.0 < target_hit <= 1.0:
        raise typer.BadParameter("a hit rate in (0, 1]", param_hint="--target-hit")
    if not 0.0 <= attention_share <= 1.0:
        raise typer.BadParameter("a share in [0, 1]", param_hint="--attention-share")
    if decision_ms < 0:
        raise typer.BadParameter("0 or more milliseconds", param_hint="--decision-ms")
    if host_expert_ms < 0:
        raise typer.BadParameter("0 or more milliseconds", param_hint="--host-expert-ms")
    evictions = _names(eviction, EVICTIONS, "--eviction")
    asked = _names(policies, POLICIES, "--policies")
    try:
        w, shape = load_workload(traces, routing, model, dtype, max_tokens)
        expert_bytes = round(expert_mb * 1e6) if expert_mb else (shape.expert_bytes if shape else None)
        bank = manifest = None
        if predictors is not None:
            bank, manifest = load_checked_bundle(predictors, w)
        if not asked:
            asked = default_policies(w, bank is not None)
        runs = policy_runs(
            w,
            asked,
            bank,
            manifest,
            overprovision=overprovision,
            adaptive_target=adaptive_target,
            adaptive_max=adaptive_max,
            oracle_ahead=oracle_ahead,
        )
        if "predicted" in evictions:
            w.scores = predictor_scores(w, bank, manifest)
        sizes = cache_sizes(
            w, _floats(fractions, "--fractions"), _floats(cache_gb, "--cache-gb"), expert_bytes
        )
        cfg = SweepConfig(
            evictions=tuple(evictions) or DEFAULT_EVICTIONS,
            lfu_half_life=lfu_half_life,
            time=TimeModel(step_ms, bandwidth_gbs, decision_ms, attention_share, host_expert_ms),
            target_hit=target_hit,
            target_metric="resident_hit_rate" if target_metric is TargetMetric.resident else "hit_rate",
            progress=progress,
        )
        doc = sweep(w, sizes, runs, expert_bytes, cfg)
        if w.scores is not None:
            doc["predicted_eviction_scores"] = (
                f"{predictors}: the predictor's probability per expert at each layer's last tap, every policy"
            )
    except (SimulateError, EngineError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]simulate:[/red] {err}")
        raise typer.Exit(2) from None
    wide = console if console.is_terminal else Console(width=160)  # a pipe or file gets whole rows
    wide.print(result_table(doc))
    if expert_bytes:
        wide.print(
            f"expert {expert_bytes / 1e6:.2f} MB; overlap ms = max(step {step_ms} ms, MB/tok / {bandwidth_gbs} GB/s) "
            "(copies hidden behind compute); serial ms = step + misses x expert / bandwidth (misses stall); clock ms = "
            f"segmented steps on one copy engine, {decision_ms} ms per segment boundary"
            + (
                f", the host computing part of the misses at {host_expert_ms} ms per expert"
                if host_expert_ms
                else ""
            )
            + " (docs/simulate.md)"
        )
    else:
        console.print("no expert size (--expert-mb or --model): bytes and modelled times left out")
    for line in capacity_lines(doc):
        wide.print(line)
    if out is not None:
        js, png = write_outputs(doc, out)
        console.print(f"[green]json[/green] {js}\n[green]plot[/green] {png}")
