"""The routing of a run, recorded per MoE layer-step, for the `oracle` policy to replay.

A run with `MOE_RECORD_ROUTING=FILE` (or a `RoutingRecorder` attached in a benchmark) writes, for every
MoE layer, the sorted expert ids the router picked at each of that layer's steps, in order. The
`oracle` policy reads the file back and, at the n-th step of layer l, prefetches exactly what layer l
routed at its n-th step in the recorded run. Replaying an identical run (same model, prompts, order
and greedy settings) therefore gives the best any predictor can do at that cache size; on any other
run the replay is meaningless, which is why the file carries the model fingerprint and is only a
benchmark baseline.

File format (JSON): {"format": "moe-prefetch-routing", "version": 1, "fingerprint": str,
"num_moe_layers": L, "layers": [[[ids of step 0], [ids of step 1], ...], ...]}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.api.errors import EngineError

FORMAT = "moe-prefetch-routing"
VERSION = 1


class RoutingRecorder:
    """Collects routed expert sets; attach with `cache.listen(Listener(route=recorder.record))` (`engine.experts.hooks`)."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[list[list[int]]] = [[] for _ in range(num_layers)]

    def record(self, layer: int, routed: list[int]) -> None:
        self.layers[layer].append(sorted(int(e) for e in routed))

    def steps(self) -> int:
        return sum(len(s) for s in self.layers)

    def save(self, path: str | Path, fingerprint: str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": fingerprint,
            "num_moe_layers": len(self.layers),
            "layers": self.layers,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
        return path


class RoutingReplay:
    """Hands out a recorded run's routing, one step at a time per layer."""

    def __init__(self, layers: list[list[list[int]]]) -> None:
        self.layers = layers
        self._cursor = [0] * len(layers)
        self.exhausted = 0  # steps asked for after the recording ran out

    @classmethod
    def load(
        cls, path: str | Path, fingerprint: str | None = None, num_layers: int | None = None
    ) -> RoutingReplay:
        path = Path(path)
        if not path.is_file():
            raise EngineError(
                f"oracle trace {path} does not exist: record one first by running the same workload with "
                f"MOE_RECORD_ROUTING={path}"
            )
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EngineError(f"oracle trace {path}: not valid JSON ({err})") from None
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise EngineError(
                f"oracle trace {path}: not a moe-prefetch routing recording (format {FORMAT} v{VERSION})"
            )
        if fingerprint is not None and doc.get("fingerprint") != fingerprint:
            raise EngineError(
                f"oracle trace {path} was recorded on another model (fingerprint {doc.get('fingerprint')}, "
                f"the served model has {fingerprint})"
            )
        layers = doc["layers"]
        if num_layers is not None and len(layers) != num_layers:
            raise EngineError(f"oracle trace {path} has {len(layers)} MoE layers, the model has {num_layers}")
        return cls(layers)

    def next(self, layer: int) -> list[int]:
        """The routed set of `layer`'s next step; empty once the recording has run out."""
        i = self._cursor[layer]
        self._cursor[layer] = i + 1
        steps = self.layers[layer]
        if i >= len(steps):
            self.exhausted += 1
            return []
        return steps[i]

    def rewind(self) -> None:
        self._cursor = [0] * len(self.layers)
        self.exhausted = 0
