"""The record of one `bench/train_moe.py` run: a JSON rewritten after every step, and a timestamped log.

A run cut off by its time limit keeps everything recorded so far. `say` prints with flush (the GPU machine
returns the output's tail) and appends the same line to `<name>.log` beside the JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class Run:
    def __init__(self, out: Path, name: str, info: dict, start: float) -> None:
        self.out, self.name, self.start = Path(out), name, start
        self.out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"kind": "train_moe", **info, "timings": {}}
        self._log = (self.out / f"{name}.log").open("w", encoding="utf-8")
        self._t = time.monotonic()

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - self.start:6.1f}s] {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def left(self, deadline: float) -> float:
        return deadline - time.monotonic()

    def put(self, key: str, value, phase: str | None = None) -> None:
        """Record `value` under `key` (and, with `phase`, the seconds since the previous phase); write."""
        self.data[key] = value
        if phase:
            now = time.monotonic()
            self.data["timings"][phase] = round(now - self._t, 2)
            self._t = now
        self.write()

    def write(self) -> None:
        tmp = self.out / f"{self.name}.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / f"{self.name}.json")
