"""Random routing with locality for the simulator's tests: a workload `predictors.simulate.replay` takes."""

from __future__ import annotations

import random

import numpy as np

from predictors.simulate import Workload


def random_workload(
    seed: int, steps: int = 300, layers: int = 3, experts: int = 12, k: int = 2, scores: bool = False
) -> Workload:
    """Each layer keeps a token's experts with probability 0.5, else draws anew from a skewed distribution.
    With `scores`, per-step predictor scores that are noisy hints of the routed set (drawn from the same
    generator right after each step's routing)."""
    rng = random.Random(seed)
    weights = [1.0 / (1 + e) for e in range(experts)]
    routed = [[] for _ in range(layers)]
    table = [np.zeros((steps, experts), dtype=np.float32) for _ in range(layers)] if scores else None
    for layer in range(layers):
        cur = sorted(rng.sample(range(experts), k))
        for s in range(steps):
            keep = [e for e in cur if rng.random() < 0.5]
            while len(keep) < k:
                e = rng.choices(range(experts), weights)[0]
                if e not in keep:
                    keep.append(e)
            cur = sorted(keep)
            routed[layer].append(cur)
            if table is not None:
                for e in range(experts):
                    table[layer][s, e] = rng.random() * 0.6 + (0.4 if e in cur else 0.0)
    extra = {"scores": table} if table is not None else {}
    return Workload("random", "routing", layers, experts, k, routed, steps, 1, **extra)
