"""The `moe-prefetch` command line: serve, the predictor workflow, and the variable table.

Flags mirror the `MOE_*` variables; a flag given on the command line wins over the variable. All
parsing happens in the command functions: importing this module has no side effects. `serve` exits with
status 3 (`server.run.EXIT_ENGINE_FATAL`) after a fatal engine error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moe_prefetch.settings import SettingsError, describe_variables, load_settings


def _variables_epilog() -> str:
    return "Environment variables (flags override them):\n\n" + "\n\n".join(
        f"{var} (default {default}): {desc}" for var, default, desc in describe_variables()
    )


app = typer.Typer(
    name="moe-prefetch",
    help="Serve Mixture-of-Experts models on one GPU smaller than the model, with predicted expert prefetching.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.command(epilog=_variables_epilog())
def serve(
    model: Path = typer.Option(
        None, help="Local Hugging Face checkpoint directory [MOE_MODEL]; unset = built-in model."
    ),
    model_name: str = typer.Option(None, help="Model id served at /v1/models [MOE_MODEL_NAME]."),
    device: str = typer.Option(None, help="auto | cuda | cpu [MOE_DEVICE]."),
    dtype: str = typer.Option(None, help="auto | float32 | bfloat16 | float16 [MOE_DTYPE]."),
    expert_cache_fraction: float = typer.Option(
        None, help="Share of routed experts cached on the device, (0,1] [MOE_EXPERT_CACHE_FRACTION]."
    ),
    expert_cache_gb: float = typer.Option(None, help="Device expert cache size in GB [MOE_EXPERT_CACHE_GB]."),
    policy: str = typer.Option(
        None, help="none|exact|overprovision|top1|adaptive|crosslayer|oracle [MOE_POLICY]."
    ),
    predictors: Path = typer.Option(None, help="Predictor bundle directory [MOE_PREDICTORS]."),
    overprovision: int = typer.Option(None, help="k' of the overprovision policy [MOE_OVERPROVISION]."),
    adaptive_target: float = typer.Option(
        None, help="Mass target of the adaptive policy [MOE_ADAPTIVE_TARGET]."
    ),
    adaptive_max: int = typer.Option(
        None, help="Most experts the adaptive policy fetches [MOE_ADAPTIVE_MAX]."
    ),
    oracle_trace: Path = typer.Option(None, help="Routing trace for the oracle policy [MOE_ORACLE_TRACE]."),
    record_routing: Path = typer.Option(
        None, help="Write this run's routing here at shutdown [MOE_RECORD_ROUTING]."
    ),
    max_model_len: int = typer.Option(
        None, help="Context window in tokens; default: the model's, at most 4096 [MOE_MAX_MODEL_LEN]."
    ),
    max_running: int = typer.Option(None, help="Requests decoded together [MOE_MAX_RUNNING]."),
    max_waiting: int = typer.Option(None, help="Waiting requests before 429 [MOE_MAX_WAITING]."),
    cuda_graphs: bool = typer.Option(
        None, "--cuda-graphs/--no-cuda-graphs", help="Decode steps as CUDA graphs [MOE_CUDA_GRAPHS]."
    ),
    fused_kernels: bool = typer.Option(
        None, "--fused-kernels/--no-fused-kernels", help="Triton kernels on CUDA [MOE_FUSED_KERNELS]."
    ),
    host_reads: bool = typer.Option(
        None,
        "--host-reads/--no-host-reads",
        help="Decode steps read missing experts from host memory [MOE_HOST_READS].",
    ),
    stream_miss_mb: float = typer.Option(
        None, help="Missed MB per step above which decode steps are segmented; 0: never [MOE_STREAM_MISS_MB]."
    ),
    max_body_bytes: int = typer.Option(None, help="Largest request body in bytes [MOE_MAX_BODY_BYTES]."),
    api_key: str = typer.Option(None, help="Bearer key required on /v1 [MOE_API_KEY]."),
    host: str = typer.Option(None, help="Bind address [MOE_HOST]."),
    port: int = typer.Option(None, help="Bind port [MOE_PORT]."),
    log_level: str = typer.Option(None, help="debug | info | warning | error [MOE_LOG_LEVEL]."),
    seed: int = typer.Option(
        None, help="Seed of the built-in/synthetic model and default sampling [MOE_SEED]."
    ),
) -> None:
    """Start the OpenAI-compatible server (the built-in model on CPU when no model is given).

    Exit status: 0 after a normal shutdown, 1 if the model cannot be loaded, 2 for bad settings, 3 after a
    fatal engine error (a poisoned device), so that a supervisor restarts the server."""
    overrides = dict(locals())
    try:
        settings = load_settings(**overrides)
    except SettingsError as err:
        typer.echo(f"moe-prefetch: {err}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from engine.frontend.async_engine import AsyncEngine
    from server.app import create_app
    from server.config import ServerConfig
    from server.run import run_server

    engine = AsyncEngine.from_config(settings.engine_config())
    try:
        engine.load()
    except Exception as err:  # a bad checkpoint or device: one clear line, no traceback
        typer.echo(f"moe-prefetch: cannot start: {err}", err=True)
        raise typer.Exit(1) from None
    config = ServerConfig.from_settings(settings)
    status = run_server(
        create_app(engine, config), settings.host, settings.port, settings.log_level, engine=engine
    )
    if status:
        raise typer.Exit(status)


@app.command()
def variables() -> None:
    """List every MOE_* variable with its default and meaning."""
    table = Table("variable", "default", "meaning")
    for row in describe_variables():
        table.add_row(*row)
    Console().print(table)


def _mount_predictors() -> None:
    """Make `collect`, `train` and `evaluate` top-level commands of `moe-prefetch`."""
    from predictors.cli import app as predictors_app

    have = {c.name or c.callback.__name__ for c in app.registered_commands}
    for cmd in predictors_app.registered_commands:
        if (cmd.name or cmd.callback.__name__) not in have:
            app.registered_commands.append(cmd)


def main() -> None:
    _mount_predictors()
    app(prog_name="moe-prefetch")


if __name__ == "__main__":
    sys.exit(main())
