"""The prefetch policies by name: the one list that settings, the engine, the simulator, the benchmarks and
the tests read (`MOE_POLICY`); and the eviction orders' names (`MOE_EVICTION`, implemented in
`engine.experts.eviction`). Torch-free.

Each entry says what a policy needs besides the model: a predictor bundle (`MOE_PREDICTORS`, or the
built-in model's), a recorded routing trace (`MOE_ORACLE_TRACE`), or nothing. How a policy turns scores
into expert ids is `engine.prefetch.policies`; the tap that runs it is `engine.prefetch.prefetcher`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicySpec:
    name: str
    needs: str  # "" | "predictors" | "trace"
    reads_inputs: bool  # runs at the pre-attention tap on the layer's input (predictors, crosslayer)
    summary: str


_SPECS = (
    PolicySpec("none", "", False, "no prediction; the cache only evicts (MOE_EVICTION)"),
    PolicySpec("exact", "predictors", True, "the predictor's top-k (k = the model's experts per token)"),
    PolicySpec(
        "overprovision",
        "predictors",
        True,
        "the predictor's top-k', k' = MOE_OVERPROVISION (default ceil(1.5 k))",
    ),
    PolicySpec("top1", "predictors", True, "the predictor's best expert per token"),
    PolicySpec(
        "adaptive",
        "predictors",
        True,
        "per token, the fewest experts whose predicted mass reaches MOE_ADAPTIVE_TARGET, at least k and at "
        "most MOE_ADAPTIVE_MAX (default 2 k)",
    ),
    PolicySpec(
        "crosslayer",
        "",
        True,
        "FATE-style baseline: layer l+1's router on layer l's pre-attention input picks k experts of layer l+1",
    ),
    PolicySpec("oracle", "trace", False, "replays the routing recorded from an identical earlier run"),
)

REGISTRY: dict[str, PolicySpec] = {s.name: s for s in _SPECS}
POLICIES: tuple[str, ...] = tuple(REGISTRY)  # every MOE_POLICY value, in the order the docs list them
PREDICTOR_POLICIES: tuple[str, ...] = tuple(s.name for s in _SPECS if s.needs == "predictors")
INPUT_POLICIES: tuple[str, ...] = tuple(s.name for s in _SPECS if s.reads_inputs)


def spec(name: str) -> PolicySpec:
    """The policy called `name`; ValueError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"no prefetch policy called {name!r}; known: {', '.join(POLICIES)}") from None


EVICTIONS = ("lru", "lfu")  # MOE_EVICTION; the simulator adds predicted and belady (predictors.eviction)
DEFAULT_LFU_HALF_LIFE = 64.0  # tokens: a routed use this long ago counts half for lfu
