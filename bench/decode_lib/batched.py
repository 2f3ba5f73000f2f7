"""Several rows decoding together on the engine: throughput, hits, misses and bytes per step.

Every expert resident with streamed steps, and a 50% cache with streamed and with segmented steps, each
on a runner of its own built for the largest batch (`seams.runner_of_kind`), policy `none`.

Imports torch, `bench.common`, `engine.model.loader` and `engine.runner` (public methods) only.
"""

from __future__ import annotations

import time

from bench.common import throughput
from bench.decode_lib.record import Record, log
from bench.decode_lib.seams import runner_of_kind
from bench.decode_lib.timing import sync
from engine.model.loader import CacheBudget, replace_cache
from engine.runner.runner import ModelRunner


def batch_rows(segments: list, batch: int, run: int) -> list:
    """The (prompt, fed tokens) of each row of one batched run: the measured segments, in turn."""
    pool = segments[1:]
    return [pool[(run * batch + b) % len(pool)] for b in range(batch)]


def engine_batched(runner: ModelRunner, segments: list, batch: int, runs: int) -> dict:
    """Decode throughput of the engine with `batch` rows decoding together (a warm-up run, then `runs`)."""
    per_step = []
    counters = runner.om.counters
    delta: dict[str, int] = {}
    total_steps = 0
    for r in range(runs + 1):
        rows = batch_rows(segments, batch, r)
        for b, (prompt, _) in enumerate(rows):
            runner.prefill(b, prompt)
        steps = min(len(f) for _, f in rows)
        pos = [len(p) for p, _ in rows]
        runner.after_step()
        before = counters.totals()
        sync(runner.device)
        t0 = time.perf_counter()
        for i in range(steps):
            runner.decode([f[i] for _, f in rows], [p + i for p in pos])
        sync(runner.device)
        elapsed = time.perf_counter() - t0
        runner.after_step()
        if r:
            per_step.append(elapsed / steps)
            after = counters.totals()
            for k in after:
                delta[k] = delta.get(k, 0) + after[k] - before[k]
            total_steps += steps
    out = throughput(per_step, batch)
    out["hit_rate"] = (delta["hits_resident"] + delta["hits_prefetched"]) / max(1, delta["requests"])
    out["misses_per_step"] = delta["misses"] / total_steps
    for k in ("bytes_demand", "bytes_host_read", "bytes_fill"):
        out[f"{k.removeprefix('bytes_')}_mb_per_step"] = delta[k] / total_steps / 1e6
    out["streamed"] = runner.streams
    return out


def batched_runs(
    om, segments: list, batches: list[int], record: Record, wrap=None, eviction: str = "lru"
) -> None:
    """`record.data["batched"]["engine" | "engine_segmented"][fraction][batch]`, written after each kind;
    `wrap`: what each runner is wrapped in (the routing replay's cursor keeper), None for none."""
    for fraction in (1.0, 0.5):
        cache = replace_cache(om, CacheBudget(fraction=fraction, eviction=eviction))
        if fraction >= 1.0:
            cache.load_all()
        for streamed in (True, False) if fraction < 1.0 else (True,):
            name = "engine" if streamed else "engine_segmented"
            with runner_of_kind(om, rows=max(batches), host_reads=streamed) as runner:
                stepper = wrap(runner) if wrap is not None else runner
                for b in batches:
                    res = engine_batched(stepper, segments, b, runs=3)
                    batched = record.data.setdefault("batched", {})
                    batched.setdefault(name, {}).setdefault(str(fraction), {})[str(b)] = res
                    log(
                        f"{name}, batch {b} @ {100 * fraction:.0f}% (none): {res['tok_s_median']:.1f} tok/s, "
                        f"hit {100 * res['hit_rate']:.1f}%, {res['misses_per_step']:.1f} misses/step, "
                        f"host reads {res['host_read_mb_per_step']:.0f} MB/step, "
                        f"fills {res['fill_mb_per_step']:.0f} MB/step, demand {res['demand_mb_per_step']:.0f} MB/step"
                    )
            record.write()
