"""The `moe-prefetch` command line: serve, the predictor workflow, and the variable table.

The serve flags are made from the settings (`moe_prefetch.settings.OPTIONS`), one per `MOE_*` variable; a
flag given on the command line wins over the variable. All parsing happens in the command functions:
importing this module has no side effects. `serve` exits with status 3 (`server.run.EXIT_ENGINE_FATAL`)
after a fatal engine error.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from engine.api.config import Option
from moe_prefetch.settings import OPTIONS, SettingsError, describe_variables, load_settings


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


def _flag_type(hint: Any, opt: Option) -> type:
    """The value type of a setting's flag: a path, bool, int or float, or else a string."""
    if opt.path:
        return Path
    base = next((t for t in get_args(hint) if t is not type(None)), hint)
    return base if base in (bool, int, float) and not opt.choices else str


def _setting_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` one option per setting (`OPTIONS`, in their order), None unless given, so that a
    flag on the command line wins over its variable and an absent one leaves the variable or default."""
    params = []
    for name, (hint, _, opt) in OPTIONS.items():
        kind = _flag_type(hint, opt)
        flag = name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if kind is bool else []
        option = typer.Option(None, *decls, help=opt.flag_help)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        )
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


@app.command(epilog=_variables_epilog())
@_setting_flags
def serve(**flags: Any) -> None:
    """Start the OpenAI-compatible server (the built-in model on CPU when no model is given).

    Exit status: 0 after a normal shutdown, 1 if the model cannot be loaded, 2 for bad settings, 3 after a
    fatal engine error (a poisoned device), so that a supervisor restarts the server."""
    try:
        settings = load_settings(**flags)
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
