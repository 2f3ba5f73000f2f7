"""Every way the decode benchmark changes how the engine runs, in one place.

Runners of another kind are built through `ModelRunner`'s constructor (`graphs`, `host_reads`, `hybrid`),
as the server builds its own from settings. The cache's stall and routing callbacks are attached the way
`engine.frontend.startup` attaches them. One switch has no public seam:
`torch_expert_gemv` (see there).

Imports `engine.api.config` (the settings' defaults), `engine.runner`, `engine.experts.hooks` and
`engine.model.offload` (`host_experts`) only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.api.config import EngineConfig
from engine.experts.hooks import Listener
from engine.model.offload import host_experts
from engine.runner.runner import ModelRunner

BENCH_MAX_LEN = 1024  # KV positions of the batch-1 and batched runners: a prompt and its decode steps


@contextmanager
def runner_of_kind(
    om,
    rows: int = 1,
    graphs: bool | None = None,
    host_reads: bool = True,
    hybrid: bool = False,
    after_demand: bool = False,
    predictor_overlap: bool = EngineConfig().predictor_overlap,
) -> Iterator:
    """A runner of its own over `om` (graphs=False: eager steps; host_reads=False: segmented steps;
    hybrid: hybrid misses, `MOE_HYBRID_MISSES`; after_demand: `MOE_LOOKAHEAD_AFTER_DEMAND`;
    predictor_overlap: `MOE_PREDICTOR_OVERLAP`, the engine's default unless given), its captured graphs
    dropped on the way out."""
    he = host_experts(om.store, om.layers, int(om.model.config.hidden_size), om.device) if hybrid else None
    runner = ModelRunner(
        om,
        rows=rows,
        max_len=BENCH_MAX_LEN,
        graphs=graphs,
        host_reads=host_reads,
        hybrid=he,
        lookahead_after_demand=after_demand,
        predictor_overlap=predictor_overlap,
    )
    try:
        yield runner
    finally:
        runner.invalidate()


def attach_cache_hooks(
    cache,
    on_stall: Callable[[float], None] | None,
    on_route: Callable[[int, list[int]], None] | None,
) -> None:
    """The stall timer and the routing recorder on a cache, as the server attaches its metrics and
    MOE_RECORD_ROUTING's recorder (`ExpertCache.listen`)."""
    cache.listen(Listener(stall=on_stall, route=on_route))


@contextmanager
def torch_expert_gemv(runner: ModelRunner) -> Iterator[ModelRunner]:
    """The runner with its expert GEMVs on torch's fallback, everything else as it was (fused norms,
    routers and RoPE, the decode-attention kernel, CUDA graphs); its graphs dropped on the way out.

    Internal access: sets `runner.use_triton`, which the constructor derives from `kernels`. The public
    seam, `ModelRunner(kernels=False)`, also turns off the decode-attention kernel and the fused RoPE, so
    it measures another thing; the seam that would replace this is a constructor argument choosing only
    the expert kernels (e.g. `expert_kernels: bool`)."""
    before = runner.use_triton
    runner.use_triton = False
    try:
        yield runner
    finally:
        runner.use_triton = before
        runner.invalidate()
