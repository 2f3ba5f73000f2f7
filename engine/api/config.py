"""Frozen engine configuration: plain values derived from the settings class. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # checkpoint dir; None = built-in model
    model_name: str | None = None
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    expert_cache_fraction: float | None = None
    expert_cache_gb: float | None = None
    policy: str = "none"
    predictors: str | None = None
    overprovision: int | None = None
    adaptive_target: float = 0.9
    adaptive_max: int | None = None
    oracle_trace: str | None = None
    record_routing: str | None = None
    max_model_len: int | None = None
    max_running: int = 8
    max_waiting: int = 64
    cuda_graphs: bool = True
    fused_kernels: bool = True
    host_reads: bool = True
    stream_miss_mb: float = 128.0  # 0: always streamed
    seed: int = 0
