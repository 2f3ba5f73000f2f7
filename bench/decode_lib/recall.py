"""The online recall of `exact` along every path a prediction can take (`--diagnose-recall`).

Inline, worker thread, per-tap CUDA graphs (each on an eager runner) and captured decode steps (the main
runner), in the bank's dtype and in fp32: they must agree with each other and with the offline held-out
recall.

Imports `engine.api`, `engine.model.loader` and `engine.prefetch` only.
"""

from __future__ import annotations

from bench.decode_lib.record import log
from bench.decode_lib.seams import runner_of_kind
from bench.decode_lib.timing import Workload
from bench.decode_lib.training import Bank
from engine.api.config import EngineConfig
from engine.model.loader import CacheBudget, replace_cache
from engine.prefetch.build import build_prefetcher


def recall_once(workload: Workload, bank, manifest: dict, prefetcher_kw: dict) -> dict:
    """`exact` on a 50% cache for the warm-up and one measured run; the cache's recall counters."""
    om, runner = workload.runner.om, workload.runner
    replace_cache(om, CacheBudget(fraction=0.5))
    pf = build_prefetcher(om, EngineConfig(policy="exact"), bank=bank, manifest=manifest, **prefetcher_kw)
    runner.invalidate()
    try:
        workload.one(*workload.segments[0])
        workload.one(*workload.segments[1])
    finally:
        pf.remove()
        runner.invalidate()
    c = om.counters.totals()
    return {
        "recall": c["predicted_routed"] / max(1, c["routed_scored"]),
        "routed_scored": c["routed_scored"],
        "prefetch_issued": c["prefetch_issued"],
    }


def diagnose_recall(workload: Workload, bank: Bank) -> dict:
    """{path: {recall, routed_scored, prefetch_issued}}; `workload` is on the main (graph) runner."""
    modes = [
        ("inline fp32", dict(threaded=False), bank.fp32, False),
        ("inline", dict(threaded=False), bank.bank, False),
        ("worker", dict(threaded=True, graphs_enabled=False), bank.bank, False),
        ("worker + tap graphs", dict(threaded=True), bank.bank, False),
        ("decode graphs", dict(), bank.bank, True),
    ]
    out = {}
    for name, kw, b, graphs in modes:
        if graphs:
            out[name] = recall_once(workload, b, bank.manifest, kw)
        else:
            with runner_of_kind(workload.runner.om, graphs=False) as eager:
                out[name] = recall_once(workload.on(eager), b, bank.manifest, kw)
        log(f"online recall, {name}: {out[name]}")
    return out
