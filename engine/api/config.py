"""The engine's configuration, written once: the frozen `EngineConfig`, whose fields hold every engine
setting's default, what it means and the values it accepts. Torch-free; imports only `engine.api`.

`moe_prefetch.settings.Settings` (the `MOE_*` variables) and the `moe-prefetch serve` flags are generated
from these fields (`options()`), so a default, a bound or a help text is changed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from engine.api.policies import DEFAULT_LFU_HALF_LIFE, EVICTIONS, POLICIES


@dataclass(frozen=True)
class Option:
    """How a setting is read: its meaning (the `MOE_*` table), its flag's help and the values it accepts."""

    help: str
    flag_help: str  # `moe-prefetch serve --help`, naming the variable
    choices: tuple[str, ...] = ()  # the only values accepted (a plain string otherwise)
    path: bool = False  # a filesystem path, read as a `pathlib.Path` by the settings class
    secret: bool = False  # never printed (the settings class holds it as a `SecretStr`)
    gt: float | None = None
    ge: float | None = None
    le: float | None = None


def setting(default: Any, help: str, flag_help: str, **accepts: Any) -> Any:
    """A config dataclass field: its default, with its `Option` as the field's metadata."""
    return field(default=default, metadata={"option": Option(help, flag_help, **accepts)})


def options(cls: type) -> dict[str, tuple[Any, Any, Option]]:
    """name -> (type hint, default, Option) of every field of a config dataclass made with `setting`."""
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.default, f.metadata["option"]) for f in fields(cls)}


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = setting(
        None,
        "Local Hugging Face checkpoint directory; unset = the built-in model.",
        "Local Hugging Face checkpoint directory [MOE_MODEL]; unset = built-in model.",
        path=True,
    )
    model_name: str | None = setting(
        None,
        "Model id served at /v1/models; default: the checkpoint folder's name.",
        "Model id served at /v1/models [MOE_MODEL_NAME].",
    )
    device: str = setting(
        "auto",
        "Where non-expert weights and the expert cache live.",
        "auto | cuda | cpu [MOE_DEVICE].",
        choices=("auto", "cuda", "cpu"),
    )
    dtype: str = setting(
        "auto",
        "Weight dtype; auto = bfloat16 on CUDA, float32 on CPU.",
        "auto | float32 | bfloat16 | float16 [MOE_DTYPE].",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    expert_cache_fraction: float | None = setting(
        None,
        "Share of all routed experts that fit in the device cache, in (0, 1].",
        "Share of routed experts cached on the device, (0,1] [MOE_EXPERT_CACHE_FRACTION].",
        gt=0.0,
        le=1.0,
    )
    expert_cache_gb: float | None = setting(
        None,
        "Device cache size in GB (alternative to the fraction).",
        "Device expert cache size in GB [MOE_EXPERT_CACHE_GB].",
        gt=0.0,
    )
    eviction: str = setting(
        "lru",
        "Which cached expert gives up its slot: lru (least recently used) or lfu (least frequently used, "
        "decayed by MOE_LFU_HALF_LIFE); docs/simulate.md has the measured effect.",
        "lru | lfu: expert cache eviction order [MOE_EVICTION].",
        choices=EVICTIONS,
    )
    lfu_half_life: float = setting(
        DEFAULT_LFU_HALF_LIFE,
        "For lfu: a routed use this many tokens ago counts half a use now; 0 = plain counts, no decay.",
        "Half-life of lfu eviction's counts, in tokens [MOE_LFU_HALF_LIFE].",
        ge=0.0,
    )
    policy: str = setting(
        "none",
        "Prefetch policy: none, exact, overprovision, top1, adaptive, crosslayer, oracle.",
        "none|exact|overprovision|top1|adaptive|crosslayer|oracle [MOE_POLICY].",
        choices=POLICIES,
    )
    predictors: str | None = setting(
        None,
        "Predictor bundle directory for exact, overprovision, top1 and adaptive; the built-in model brings its "
        "own. A bundle trained with --distance d prefetches each layer's experts d MoE layers early.",
        "Predictor bundle directory [MOE_PREDICTORS].",
        path=True,
    )
    overprovision: int | None = setting(
        None,
        "k' for the overprovision policy; default ceil(1.5 k).",
        "k' of the overprovision policy [MOE_OVERPROVISION].",
        ge=1,
    )
    adaptive_target: float = setting(
        0.9,
        "Probability mass the adaptive policy covers per token.",
        "Mass target of the adaptive policy [MOE_ADAPTIVE_TARGET].",
        gt=0.0,
        le=1.0,
    )
    adaptive_max: int | None = setting(
        None,
        "Most experts the adaptive policy prefetches per token; default 2 k.",
        "Most experts the adaptive policy fetches [MOE_ADAPTIVE_MAX].",
        ge=1,
    )
    oracle_trace: str | None = setting(
        None,
        "Routing file replayed by the oracle policy (recorded with MOE_RECORD_ROUTING).",
        "Routing trace for the oracle policy [MOE_ORACLE_TRACE].",
        path=True,
    )
    oracle_ahead: int = setting(
        0,
        "MoE layers before its layer the oracle policy issues each recorded routing (0: at the layer's own "
        "pre-attention tap; d: at layer l - d's, so the copies have d layers of compute to hide behind).",
        "Lookahead distance of the oracle policy [MOE_ORACLE_AHEAD].",
        ge=0,
    )
    record_routing: str | None = setting(
        None,
        "Record every layer-step's routed experts to this file at shutdown (for the oracle policy).",
        "Write this run's routing here at shutdown [MOE_RECORD_ROUTING].",
        path=True,
    )
    max_model_len: int | None = setting(
        None,
        "Context window in tokens; default: the model's, at most 4096 (KV rows are allocated up front).",
        "Context window in tokens; default: the model's, at most 4096 [MOE_MAX_MODEL_LEN].",
        ge=16,
    )
    max_running: int = setting(
        8,
        "Requests decoded together: one batched step per round, each in its own KV row.",
        "Requests decoded together [MOE_MAX_RUNNING].",
        ge=1,
        le=1024,
    )
    max_waiting: int = setting(
        64,
        "Requests allowed to wait; one more is answered 429.",
        "Waiting requests before 429 [MOE_MAX_WAITING].",
        ge=0,
    )
    cuda_graphs: bool = setting(
        True,
        "Replay decode steps as CUDA graphs (off: every step runs eagerly, much slower).",
        "Decode steps as CUDA graphs [MOE_CUDA_GRAPHS].",
    )
    fused_kernels: bool = setting(
        True,
        "Triton kernels for experts, attention, norms, RoPE and routers on CUDA (off: torch ops only).",
        "Triton kernels on CUDA [MOE_FUSED_KERNELS].",
    )
    predictor_kernel: bool = setting(
        False,
        "With fused kernels: each decode step's predictors run as one Triton kernel per layer (both "
        "linears, the activation, the logits and the top-k in one launch) instead of torch's chain of "
        "launches; prefills keep torch's path. In line (segmented steps, or MOE_PREDICTOR_OVERLAP off) it "
        "halves what predicting costs a step on an H200; on the parallel branch of streamed steps torch's "
        "path overlaps better (docs/performance.md). Scores equal up to rounding, so a near tie may "
        "prefetch another expert.",
        "Predictors of decode steps as one Triton kernel per layer [MOE_PREDICTOR_KERNEL].",
    )
    lookahead_after_demand: bool = setting(
        False,
        "Segmented decode steps queue a prefetch tap's copies for later layers (a lookahead bundle, "
        "MOE_ORACLE_AHEAD) behind the routed layer's own missing experts instead of ahead of them, so a "
        "layer's misses never wait for copies a later layer needs. Measured on an H200 with the twins' "
        "routing (docs/performance.md): +5-15% for trained lookahead predictors (Phi exact+2 1.26x none "
        "at 50%), even or -2% for a perfect one.",
        "Lookahead copies queue behind the layer's demand copies [MOE_LOOKAHEAD_AFTER_DEMAND].",
    )
    predictor_overlap: bool = setting(
        True,
        "Streamed decode steps run each prefetch tap's predictor on a parallel branch of the step's CUDA "
        "graph (a side stream joined at the step's end), overlapping the layer's attention and experts, "
        "instead of in line before them; its predictions are read after the step either way, so tokens "
        "do not change. Measured on an H200 with every expert resident: predicting costs 5.2 µs a layer "
        "on the Qwen3-30B-A3B twin and 8.8 on the DeepSeek-V2-Lite twin, against 32.5 in line "
        "(docs/performance.md).",
        "Predictors on a parallel branch of streamed decode steps [MOE_PREDICTOR_OVERLAP].",
    )
    host_reads: bool = setting(
        True,
        "Decode steps read experts missing from the GPU cache from host memory inside one CUDA graph "
        "(off: the host makes each layer's experts resident first).",
        "Decode steps read missing experts from host memory [MOE_HOST_READS].",
    )
    # measured on an H200 (docs/performance.md): at 24 MB per step streamed steps were 24% faster, at 179 MB
    # 4% slower
    stream_miss_mb: float = setting(
        128.0,
        "With host reads: decode steps stay streamed while recent steps missed fewer MB of experts "
        "than this per step, and are segmented above it (0: always streamed).",
        "Missed MB per step above which decode steps are segmented; 0: never [MOE_STREAM_MISS_MB].",
        ge=0,
    )
    hybrid_misses: bool = setting(
        False,
        "Decode steps on CUDA compute part of each layer's missed experts on the host CPU while PCIe copies "
        "the rest, split by rates measured at start (eager and segmented steps; streamed steps, which read "
        "their misses from host memory, do not). Measured 0.67-0.95x slower on an H200's host, and in bf16 "
        "it may flip a near-tied greedy token (docs/performance.md).",
        "Host CPU computes part of each decode layer's misses [MOE_HYBRID_MISSES].",
    )
    coded_experts: bool = setting(
        False,
        "Copies into the GPU expert cache move a lossless code of each bfloat16 expert (sign and mantissa "
        "raw, the exponent Huffman-coded: about 0.69 of the bytes) and a Triton kernel decodes each batch of "
        "copies into their slots on a second stream; every expert is coded once at start (30-50 s for a "
        "Qwen3-30B-A3B shape on an H200), and the codes take that much more pinned host memory. Outputs do "
        "not change. Streamed steps' host reads stay plain. bfloat16 only. Measured on an H200 with the "
        "Qwen3 and DeepSeek twins' routing at 25-50% (docs/performance.md): `none` 1.08-1.17x and `oracle+1` "
        "1.43-1.81x `none` with plain copies; trained lookahead banks 0.87-1.20x, and with "
        "MOE_LOOKAHEAD_AFTER_DEMAND and lfu eviction 1.30-1.36x on DeepSeek's twin.",
        "Coded (lossless, ~0.69x bytes) bf16 expert copies [MOE_CODED_EXPERTS].",
    )
    warmup_tokens: int | None = setting(
        None,
        "At start, before /health reports ready, decode this many tokens of a fixed prompt at every batch "
        "size a step can take (1, 2, 4, ... MOE_MAX_RUNNING rows), so the first requests do not wait for "
        "kernel compilation, autotuning and the first CUDA graph captures; none of it is counted in the "
        "metrics or a recorded routing. Default: 4 on CUDA, 0 on the CPU (nothing to compile there); 0: no "
        "warm-up.",
        "Warm-up decode steps per batch size at start (default: 4 on CUDA, 0 on CPU) [MOE_WARMUP_TOKENS].",
        ge=0,
        le=64,
    )
    seed: int = setting(
        0,
        "Seed of the synthetic and built-in models, and the default sampling seed.",
        "Seed of the built-in/synthetic model and default sampling [MOE_SEED].",
    )
