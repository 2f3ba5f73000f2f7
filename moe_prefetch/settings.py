"""One settings class, read from `MOE_*` environment variables and mirrored by CLI flags.

Built once at start-up (never at import). Invalid values raise `SettingsError` whose message is one
line naming the variable, so `moe-prefetch serve` can print it and exit. The engine never sees this
class: it receives the plain frozen `engine.api.config.EngineConfig` made by `engine_config()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.api.config import EngineConfig
from engine.api.policies import POLICIES

Policy = Literal[POLICIES]  # type: ignore[valid-type]


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOE_", frozen=True, extra="ignore")

    model: Path | None = Field(
        None, description="Local Hugging Face checkpoint directory; unset = the built-in model."
    )
    model_name: str | None = Field(
        None, description="Model id served at /v1/models; default: the checkpoint folder's name."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where non-expert weights and the expert cache live."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    expert_cache_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of all routed experts that fit in the device cache, in (0, 1].",
    )
    expert_cache_gb: float | None = Field(
        None, gt=0.0, description="Device cache size in GB (alternative to the fraction)."
    )
    policy: Policy = Field(
        "none", description="Prefetch policy: none, exact, overprovision, top1, adaptive, crosslayer, oracle."
    )
    predictors: Path | None = Field(
        None,
        description="Predictor bundle directory for exact, overprovision, top1 and adaptive; the built-in model brings its own.",
    )
    overprovision: int | None = Field(
        None, ge=1, description="k' for the overprovision policy; default ceil(1.5 k)."
    )
    adaptive_target: float = Field(
        0.9, gt=0.0, le=1.0, description="Probability mass the adaptive policy covers per token."
    )
    adaptive_max: int | None = Field(
        None, ge=1, description="Most experts the adaptive policy prefetches per token; default 2 k."
    )
    oracle_trace: Path | None = Field(
        None, description="Routing file replayed by the oracle policy (recorded with MOE_RECORD_ROUTING)."
    )
    record_routing: Path | None = Field(
        None,
        description="Record every layer-step's routed experts to this file at shutdown (for the oracle policy).",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="Context window in tokens; default: the model's, at most 4096 (KV rows are allocated up front).",
    )
    max_running: int = Field(
        8,
        ge=1,
        le=1024,
        description="Requests decoded together: one batched step per round, each in its own KV row.",
    )
    max_waiting: int = Field(64, ge=0, description="Requests allowed to wait; one more is answered 429.")
    cuda_graphs: bool = Field(
        True, description="Replay decode steps as CUDA graphs (off: every step runs eagerly, much slower)."
    )
    fused_kernels: bool = Field(
        True,
        description="Triton kernels for experts, attention, norms, RoPE and routers on CUDA (off: torch ops only).",
    )
    host_reads: bool = Field(
        True,
        description="Decode steps read experts missing from the GPU cache from host memory inside one CUDA graph "
        "(off: the host makes each layer's experts resident first).",
    )
    stream_miss_mb: float = Field(
        128.0,
        ge=0,
        description="With host reads: decode steps stay streamed while recent steps missed fewer MB of experts "
        "than this per step, and are segmented above it (0: always streamed).",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )
    api_key: SecretStr | None = Field(
        None, description="If set, every /v1 request needs 'Authorization: Bearer <key>'."
    )
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server binds.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    seed: int = Field(
        0, description="Seed of the synthetic and built-in models, and the default sampling seed."
    )

    @model_validator(mode="after")
    def _one_cache_size(self) -> Settings:
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
        return EngineConfig(
            model=str(self.model) if self.model else None,
            model_name=self.model_name,
            device=self.device,
            dtype=self.dtype,
            expert_cache_fraction=self.expert_cache_fraction,
            expert_cache_gb=self.expert_cache_gb,
            policy=self.policy,
            predictors=str(self.predictors) if self.predictors else None,
            overprovision=self.overprovision,
            adaptive_target=self.adaptive_target,
            adaptive_max=self.adaptive_max,
            oracle_trace=str(self.oracle_trace) if self.oracle_trace else None,
            record_routing=str(self.record_routing) if self.record_routing else None,
            max_model_len=self.max_model_len,
            max_running=self.max_running,
            max_waiting=self.max_waiting,
            cuda_graphs=self.cuda_graphs,
            fused_kernels=self.fused_kernels,
            host_reads=self.host_reads,
            stream_miss_mb=self.stream_miss_mb,
            seed=self.seed,
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
