"""Timing prefills and teacher-forced decode steps on one runner, and the summary of a configuration's runs.

A `Workload` is a warm-up and the measured runs, each: prefill a prompt into KV row 0, then decode steps
that feed the text's next tokens one at a time, recording each step's argmax (kept on the device: no sync
inside the timed loop) and the cache counters' change. The whole sequence of calls is what `oracle`
replays.

Imports torch, `engine.runner` (the runner's public methods) and `engine.model.loader` only.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

from engine.model.loader import CacheBudget, replace_cache
from engine.runner.runner import ModelRunner


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stalls:
    """Sums the stall seconds the cache reports (its `on_stall` callback)."""

    total = 0.0

    def add(self, s: float) -> None:
        self.total += s


STALLS = Stalls()  # one for the whole run: each measurement reads its difference


class GCPauses:
    """The garbage collector's passes while installed (`gc.callbacks`): each one's generation and seconds.
    A full pass over a loaded model's heap stops the host for 100-250 ms with no CUDA call to show for it
    (`engine.frontend.heap`); a run's `gc` says whether one fell inside it."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float]] = []
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.passes.append((int(info.get("generation", -1)), time.perf_counter() - self._t0))

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def since(self, start: int) -> dict:
        """The passes after the first `start`: how many (and full ones), their total and longest ms."""
        got = self.passes[start:]
        return {
            "passes": len(got),
            "full": sum(1 for g, _ in got if g == 2),
            "total_ms": 1e3 * sum(t for _, t in got),
            "max_ms": 1e3 * max((t for _, t in got), default=0.0),
        }


GC_PAUSES = GCPauses()


class Workload:
    """A warm-up and `runs` measured runs over `segments` [(prompt, fed tokens)], the first one warming up."""

    def __init__(
        self,
        runner: ModelRunner,
        segments: list[tuple[list[int], list[int]]],
        wrap=None,
        eviction: str = "lru",
    ) -> None:
        # wrap(runner): the runner the measurements drive (`replay.ReplayRunner` under --routing twin:)
        self.wrap = wrap or (lambda r: r)
        self.runner, self.segments = self.wrap(runner), segments
        self.device = runner.device
        self.eviction = eviction  # of every cache the measurements make (--eviction, MOE_EVICTION)

    def on(self, runner: ModelRunner) -> Workload:
        """The same text on another runner (wrapped the same way)."""
        return Workload(runner, self.segments, self.wrap, self.eviction)

    def one(self, prompt: list[int], feed: list[int]) -> dict:
        om, runner = self.runner.om, self.runner
        sync(self.device)
        t0 = time.perf_counter()
        logits = runner.prefill(0, prompt)
        sync(self.device)
        t_prefill = time.perf_counter() - t0
        runner.after_step()
        before = om.counters.totals()
        stall0 = STALLS.total
        GC_PAUSES.install()
        gc0 = len(GC_PAUSES.passes)
        runner.host_clock.reset()
        pos = len(prompt)
        t0 = time.perf_counter()
        argmax, marks = [], []
        for tok in feed:
            argmax.append(torch.argmax(logits))  # kept on the device: no sync inside the timed loop
            logits = runner.decode([tok], [pos])[0]
            marks.append(time.perf_counter())  # when the host got the step back (see `step_spread`)
            pos += 1
        sync(self.device)
        t_decode = time.perf_counter() - t0
        runner.after_step()
        after = om.counters.totals()
        host = runner.host_clock.snapshot()
        return {
            "prefill_s": t_prefill,
            "decode_s": t_decode,
            "tokens": [int(t) for t in argmax],
            "delta": {k: after[k] - before[k] for k in after},
            "stall_s": STALLS.total - stall0,
            "gc": GC_PAUSES.since(gc0),  # the collector's passes during the decode steps
            "step_s": [b - a for a, b in zip([t0, *marks[:-1]], marks, strict=True)],
            "host": host,  # segmented steps' host time by phase (`engine.runner.host_clock`)
        }

    def run(self) -> list[dict]:
        self.one(*self.segments[0])  # warm-up: captures graphs, fills the cache as a running server's is
        return [self.one(*seg) for seg in self.segments[1:]]


def step_spread(step_s: list[float]) -> dict:
    """How one run's decode steps spread: the host's time from one step's return to the next (segmented
    steps wait for each layer's routing, so theirs is the step's own time; a streamed step's graph runs
    ahead of the host, so only the run's total is its time), as the median, the 90th percentile and the
    largest in ms, and how many steps took over twice the median: a slow run of uniformly slow steps is
    a different fault from one with a few long waits."""
    ms = sorted(1e3 * s for s in step_s)
    if not ms:
        return {"p50_ms": None, "p90_ms": None, "max_ms": None, "over_2x_median": 0}
    p50 = statistics.median(ms)
    return {
        "p50_ms": p50,
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "max_ms": ms[-1],
        "over_2x_median": sum(m > 2 * p50 for m in ms),
    }


def host_phases(runs: list[dict]) -> dict | None:
    """The segmented steps' host time a token by phase (`engine.runner.host_clock`), the median over runs, in
    ms, with their sum (`total`); None where no run replayed a segmented step (streamed, whole, eager)."""
    per = [
        {k: v / r["host"]["steps"] for k, v in r["host"]["ms"].items()}
        for r in runs
        if r.get("host", {}).get("steps")
    ]
    if not per:
        return None
    out = {k: statistics.median(p[k] for p in per) for k in per[0]}
    out["total"] = statistics.median(sum(p.values()) for p in per)
    return out


def summarise(runs: list[dict], prompt_len: int, bw: float | None) -> dict:
    """Tokens/s (median, min, max), hits, stalls, bytes per token and the PCIe floor of a config's runs."""
    new = len(runs[0]["tokens"])
    tok_s = [new / r["decode_s"] for r in runs]
    d = {k: sum(r["delta"][k] for r in runs) for k in runs[0]["delta"]}
    n = new * len(runs)
    req = max(1, d["requests"])
    # the bytes a step needs over PCIe: copies made for it (prefetch, demand) and weights its kernels read
    # from host memory (streamed steps); the fills behind streamed steps are counted apart
    bytes_tok = (d["bytes_prefetch"] + d["bytes_demand"] + d.get("bytes_host_read", 0)) / n
    fill_tok = d.get("bytes_fill", 0) / n
    out = {
        "tok_s": tok_s,
        "tok_s_median": statistics.median(tok_s),
        "tok_s_min": min(tok_s),
        "tok_s_max": max(tok_s),
        "ms_per_token_median": 1e3 / statistics.median(tok_s),
        "prefill_tok_s_median": statistics.median(prompt_len / r["prefill_s"] for r in runs),
        "hit_rate": (d["hits_resident"] + d["hits_prefetched"]) / req,
        "prefetch_hit_rate": d["hits_prefetched"] / req,
        "misses_per_token": d["misses"] / n,
        "stall_ms_per_token": 1e3 * sum(r["stall_s"] for r in runs) / n,
        "bytes_per_token": bytes_tok,
        "demand_bytes_per_token": d["bytes_demand"] / n,
        "host_read_bytes_per_token": d.get("bytes_host_read", 0) / n,
        "fill_bytes_per_token": fill_tok,
        "prefetch_issued_per_token": d["prefetch_issued"] / n,
        "wasted_per_token": d["prefetch_wasted"] / n,
        "wasted_ratio": d["prefetch_wasted"] / d["prefetch_issued"] if d["prefetch_issued"] else None,
        "online_recall": d["predicted_routed"] / d["routed_scored"] if d["routed_scored"] else None,
        "tokens": [r["tokens"] for r in runs],
        "steps_by_run": [step_spread(r["step_s"]) for r in runs if "step_s" in r],
        "gc_by_run": [r["gc"] for r in runs if "gc" in r],
        "host_ms_per_token": host_phases(runs),
    }
    if bw:
        out["pcie_ms_per_token"] = 1e3 * bytes_tok / bw
        out["pcie_ms_per_token_with_fills"] = 1e3 * (bytes_tok + fill_tok) / bw
    return out


def time_prefill(om, fraction: float, prompt: list[int], reps: int = 3, wrap=None) -> dict:
    """Prefill tokens/s of one long prompt at a cache of `fraction`, on a runner sized for it (`wrap`: as
    `Workload`'s)."""
    replace_cache(om, CacheBudget(fraction=fraction))
    runner = ModelRunner(om, rows=1, max_len=len(prompt) + 8)
    runner = wrap(runner) if wrap else runner
    times = []
    for _ in range(reps):
        sync(om.device)
        t0 = time.perf_counter()
        runner.prefill(0, prompt)
        sync(om.device)
        times.append(time.perf_counter() - t0)
    del runner
    return {
        "fraction": fraction,
        "prompt_tokens": len(prompt),
        "s": times,
        "tok_s_median": len(prompt) / statistics.median(times),
        "tok_s_min": len(prompt) / max(times),
        "tok_s_max": len(prompt) / min(times),
    }
