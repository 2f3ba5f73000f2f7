"""One settings class, read from `MOE_*` environment variables and mirrored by CLI flags.

Built once at start-up (never at import). Invalid values raise `SettingsError` whose message is one
line naming the variable, so `moe-prefetch serve` can print it and exit. The engine never sees this
class: it receives the plain frozen `engine.api.config.EngineConfig` made by `engine_config()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.api.config import EngineConfig, Option, options, setting


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


@dataclass(frozen=True)
class ServingOptions:
    """The HTTP server's settings (`server.config.ServerConfig` is made from them), in the engine's format."""

    max_body_bytes: int = setting(
        4 * 1024 * 1024,
        "Largest request body accepted, in bytes.",
        "Largest request body in bytes [MOE_MAX_BODY_BYTES].",
        ge=1024,
    )
    api_key: str | None = setting(
        None,
        "If set, every /v1 request needs 'Authorization: Bearer <key>'.",
        "Bearer key required on /v1 [MOE_API_KEY].",
        secret=True,
    )
    response_store: int = setting(
        1024,
        "Responses kept in memory for previous_response_id and GET /v1/responses/{id} (most recently used); "
        "0: none, every request stateless.",
        "Responses kept for previous_response_id [MOE_RESPONSE_STORE].",
        ge=0,
    )
    host: str = setting("127.0.0.1", "Address the HTTP server binds.", "Bind address [MOE_HOST].")
    port: int = setting(8000, "Port the HTTP server binds.", "Bind port [MOE_PORT].", ge=1, le=65535)
    log_level: str = setting(
        "info",
        "Log level.",
        "debug | info | warning | error [MOE_LOG_LEVEL].",
        choices=("debug", "info", "warning", "error"),
    )


def _table() -> dict[str, tuple[Any, Any, Option]]:
    """Every setting in the order of the variable table (README.md): the engine's, the server's, the seed."""
    engine = options(EngineConfig)
    seed = engine.pop("seed")
    return {**engine, **options(ServingOptions), "seed": seed}


OPTIONS = _table()
ENGINE_FIELDS = tuple(options(EngineConfig))


def _field(hint: Any, default: Any, opt: Option) -> tuple[Any, Any]:
    """The pydantic (type, Field) of one setting."""
    kind = Path if opt.path else SecretStr if opt.secret else Literal[opt.choices] if opt.choices else None
    if kind is not None:
        hint = kind | None if type(None) in get_args(hint) else kind
    bounds = {k: getattr(opt, k) for k in ("gt", "ge", "le") if getattr(opt, k) is not None}
    return hint, Field(default, description=opt.help, **bounds)


class _Checks(BaseSettings):
    """What no single field can say; the fields are added from `OPTIONS` (`Settings` below)."""

    model_config = SettingsConfigDict(env_prefix="MOE_", frozen=True, extra="ignore")

    @model_validator(mode="after")
    def _one_cache_size(self) -> _Checks:
        if self.expert_cache_fraction is not None and self.expert_cache_gb is not None:
            raise ValueError("set MOE_EXPERT_CACHE_FRACTION or MOE_EXPERT_CACHE_GB, not both")
        if self.model is not None and not self.model.is_dir():
            raise ValueError(f"MOE_MODEL: {self.model} is not a directory")
        if self.predictors is not None and not self.predictors.is_dir():
            raise ValueError(f"MOE_PREDICTORS: {self.predictors} is not a directory")
        if self.policy == "oracle" and self.oracle_trace is None:
            raise ValueError(
                "MOE_POLICY=oracle needs MOE_ORACLE_TRACE (a routing file recorded with MOE_RECORD_ROUTING)"
            )
        if self.oracle_trace is not None and not self.oracle_trace.is_file():
            raise ValueError(
                f"MOE_ORACLE_TRACE: {self.oracle_trace} is not a file (record one with MOE_RECORD_ROUTING)"
            )
        return self

    def engine_config(self) -> EngineConfig:
        values = {name: getattr(self, name) for name in ENGINE_FIELDS}
        return EngineConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in values.items()})


# Every `MOE_*` variable, validated and frozen: the fields of `OPTIONS` on the checks of `_Checks`.
Settings = create_model(
    "Settings",
    __base__=_Checks,
    __module__=__name__,
    **{name: _field(*spec) for name, spec in OPTIONS.items()},
)


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "__root__"]
    msg = first.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc:
        return msg if msg.startswith("MOE_") or "MOE_" in msg else f"invalid configuration: {msg}"
    var = "MOE_" + loc[0].upper()
    value = first.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return f"{var}: {msg}{shown}"


def load_settings(**overrides: object) -> Settings:
    """Read `MOE_*` variables; non-None keyword overrides (CLI flags) win. Raises `SettingsError`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as err:
        raise SettingsError(_one_line(err)) from None


def describe_variables() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: used by --help and the README table."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else str(field.default)
        rows.append((f"MOE_{name.upper()}", default, field.description or ""))
    return rows
