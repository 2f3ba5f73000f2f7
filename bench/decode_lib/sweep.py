"""Every policy at every cache size on the batch-1 runner, and the fast path's ablations (CUDA only).

Per cache size: `none` alone with every expert resident, every policy below a full cache (`oracle` replays
the routing `none` recorded at the same size; `oracle+d` issues it d MoE layers ahead, MOE_ORACLE_AHEAD). With every expert resident also eager steps and the slot
GEMV's torch fallback; at 50% `exact` with eager steps; below a full cache the `--segmented` policies with
segmented steps (no reads from host memory). Each configuration goes to the record as it finishes.

Imports `engine.api`, `engine.model.loader`, `engine.prefetch` and `engine.model.fingerprint` only.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.decode_lib.model import PROMPT_TOKENS
from bench.decode_lib.overlap import profile_overlap
from bench.decode_lib.record import Record, log
from bench.decode_lib.seams import attach_cache_hooks, runner_of_kind, torch_expert_gemv
from bench.decode_lib.timing import STALLS, Workload, summarise
from bench.decode_lib.training import Bank
from bench.policy_names import policy_width, split_policy
from engine.api.config import EngineConfig
from engine.model.fingerprint import model_fingerprint
from engine.model.loader import CacheBudget, replace_cache
from engine.prefetch.build import build_prefetcher
from engine.prefetch.routing_trace import RoutingRecorder


def engine_config(policy: str, routing: Path) -> EngineConfig:
    """The engine configuration of a sweep's policy name (`split_policy`); a predictor policy's distance is
    its bank's (`bank_for`), not a setting."""
    name, ahead = split_policy(policy)
    if name != "oracle":
        return EngineConfig(policy=name, overprovision=policy_width(policy))
    return EngineConfig(policy="oracle", oracle_trace=str(routing), oracle_ahead=ahead)


def bank_for(bank: Bank, policy: str) -> Bank | None:
    """The bank a policy runs with: its lookahead bank for `exact+d` (None when there is none)."""
    name, ahead = split_policy(policy)
    return bank.ahead.get(ahead) if ahead and name != "oracle" else bank


def run_config(
    workload: Workload,
    bank: Bank,
    policy: str,
    fraction: float,
    routing: Path,
    bw,
    profile_work: Path | None = None,
    keep_traces: Path | None = None,
    tag: str | None = None,
):
    """One configuration on the workload's runner: a fresh cache of `fraction` (`none` also records its
    routing for `oracle`, once per file), the policy's prefetcher, the runs; (summary, slots, wall s).
    `profile_work`: then a profiler trace of a few more steps in the same configuration (its numbers in
    the summary's `profile`; the trace itself is written there and deleted, or kept gzipped in
    `keep_traces`)."""
    om, runner = workload.runner.om, workload.runner
    cache = replace_cache(om, CacheBudget(fraction=fraction, eviction=workload.eviction))
    if fraction >= 1.0:
        cache.load_all()
    recorder = None
    if policy == "none" and not routing.exists():
        recorder = RoutingRecorder(len(om.layers))
    attach_cache_hooks(cache, STALLS.add, recorder.record if recorder is not None else None)
    ecfg = engine_config(policy, routing)
    bank = bank_for(bank, policy)
    latencies: list[float] = []
    pf = build_prefetcher(om, ecfg, bank=bank.bank, manifest=bank.manifest, on_latency=latencies.append)
    runner.invalidate()
    t0 = time.perf_counter()
    profiled = None
    try:
        runs = workload.run()
        if profile_work is not None:
            tag = tag or re.sub(r"[^A-Za-z0-9.-]+", "_", f"{policy}_{fraction:g}")
            profiled = profile_overlap(workload, profile_work, tag, keep_traces)
    finally:
        if pf is not None:
            pf.remove()
        runner.invalidate()
    if recorder is not None:
        recorder.save(routing, model_fingerprint(om.model))
        attach_cache_hooks(cache, STALLS.add, None)
    s = summarise(runs, PROMPT_TOKENS, bw)
    if profiled is not None:
        s["profile"] = profiled
    if latencies:
        s["prediction_latency_ms_median"] = 1e3 * statistics.median(latencies)
        s["prediction_latency_ms_p99"] = 1e3 * sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    return s, cache.capacity, time.perf_counter() - t0


class Deadline:
    """`--deadline` seconds from the start of the run (0: none)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()

    def passed(self) -> bool:
        return bool(self.seconds) and time.perf_counter() - self.started > self.seconds


@dataclass
class Sweep:
    """What every configuration of the sweep shares."""

    workload: Workload  # on the main batch-1 runner
    bank: Bank
    routing: Path  # `none`'s recorded routing, `oracle`'s trace
    bw: float | None  # host->device bytes/s (CUDA), for the PCIe floor
    record: Record
    deadline: Deadline
    cuda: bool
    ablations: bool = True  # the eager and torch-GEMV runs (resident) and `exact` eager (50%)
    full_cache: tuple[str, ...] = ("none",)  # the policies run at a full cache too (what predicting costs)
    coded: object = None  # the store's CodedStore once a `--coded` run has coded it (kept across cache sizes)
    profile: frozenset[str] = frozenset()  # `config_key`s to profile after their runs (--profile-configs)
    work: Path | None = None  # where those traces go
    keep_traces: Path | None = None  # where they are kept, gzipped (--keep-traces; None: deleted)

    def measure(self, policy: str, fraction: float, variant: str | None = None, workload=None) -> None:
        workload = workload or self.workload
        key = config_key(policy, fraction, variant)
        work = self.work if key in self.profile else None
        s, slots, wall = run_config(
            workload, self.bank, policy, fraction, self.routing, self.bw, work, self.keep_traces,
            re.sub(r"[^A-Za-z0-9.-]+", "_", key),  # a file name the device brings back (no + or @)
        )  # fmt: skip
        self.record.add_config(policy, fraction, s, slots, wall, workload.runner.steps, variant=variant)
        if "profile" in s:
            log(f"profile {key}: {json.dumps(s['profile'])}")


def config_key(policy: str, fraction: float, variant: str | None = None) -> str:
    """`exact+2@0.5/coded`: a configuration as `--profile-configs` names it."""
    return f"{policy}@{fraction:g}" + (f"/{variant}" if variant else "")


def sweep(
    sw: Sweep,
    fractions: list[float],
    policies: list[str],
    segmented: list[str],
    hybrid: list[str] = (),
    after_demand: list[str] = (),
    coded: list[str] = (),
) -> None:
    runner = sw.workload.runner
    for fraction in fractions:
        full = ["none"] + [p for p in policies if p in sw.full_cache and p != "none"]
        here = full if fraction >= 1.0 else policies
        for policy in here:
            if sw.deadline.passed():
                log(f"deadline: {policy} @ {fraction} and later configs skipped")
                sw.record.skipped(f"{policy}@{fraction}")
                continue
            if policy.startswith("oracle") and not sw.routing.exists():
                log("oracle skipped: no routing recorded (run policy none first)")
                continue
            if bank_for(sw.bank, policy) is None:
                log(
                    f"{policy} skipped: no lookahead predictions of that distance (an artefact of train_twin --lookahead)"
                )
                continue
            if policy == "none" and fraction < 1.0:
                sw.routing.unlink(missing_ok=True)  # record this cache size's routing for its oracle
            runner.reset_steps()
            sw.measure(policy, fraction)
        if sw.cuda and sw.ablations and fraction >= 1.0 and not sw.deadline.passed():
            resident_ablations(sw, fraction)
        if sw.cuda and sw.ablations and fraction == 0.5 and "exact" in policies and not sw.deadline.passed():
            with runner_of_kind(runner.om, graphs=False) as eager:  # the same policy without CUDA graphs
                sw.measure("exact", fraction, "eager", sw.workload.on(eager))
        if sw.cuda and fraction < 1.0:
            ran = [p for p in here if bank_for(sw.bank, p) is not None]  # the lookahead ones the artefact has
            segmented_steps(sw, fraction, [p for p in segmented if p in ran])
            segmented_steps(sw, fraction, [p for p in hybrid if p in ran], hybrid=True)
            segmented_steps(sw, fraction, [p for p in after_demand if p in ran], after_demand=True)
            coded_copies(
                sw,
                fraction,
                [p for p in coded if p in ran],
                [p for p in segmented if p in ran],
                [p for p in after_demand if p in ran],
            )


def resident_ablations(sw: Sweep, fraction: float) -> None:
    """The fast path with every expert resident, without CUDA graphs and with the torch GEMV."""
    with runner_of_kind(sw.workload.runner.om, graphs=False) as eager:
        sw.measure("none", fraction, "eager", sw.workload.on(eager))
    with torch_expert_gemv(sw.workload.runner):
        sw.measure("none", fraction, "torch-gemv")


def coded_copies(
    sw: Sweep, fraction: float, policies: list[str], segmented: list[str], after_demand: list[str] = ()
) -> None:
    """The same policies with coded expert copies (MOE_CODED_EXPERTS, `engine.model.coding.attach_coded`): on
    the main runner (its streamed steps still read misses from host memory; its prefetches and segmented
    steps copy codes), those also in `segmented` with segmented steps, and those also in `after_demand` with
    segmented steps queueing lookahead copies behind the demand (`coded-after-demand`); the store is coded
    once."""
    if not policies:
        return
    om = sw.workload.runner.om
    if sw.coded is None:
        from engine.model.coding import attach_coded

        t0 = time.perf_counter()
        sw.coded = attach_coded(om.store, om.device)
        om.store.coded = None
        sw.record.data["coded_experts"] = info = {
            "ratio": round(sw.coded.ratio(om.store), 4),
            "coded_gb": round(sw.coded.coded_bytes / 1e9, 2),
            "coding_s": round(time.perf_counter() - t0, 1),
            "steps": sw.coded.layout.steps,
        }
        log(f"coded experts: {info}")
    om.store.coded = sw.coded  # the caches run_config makes from now on copy codes
    try:
        for policy in policies:
            if sw.deadline.passed():
                sw.record.skipped(f"{policy}@{fraction}/coded")
                continue
            sw.workload.runner.reset_steps()
            sw.measure(policy, fraction, "coded")
        for variant, chosen, after in (
            ("coded-segmented", segmented, False),
            ("coded-after-demand", after_demand, True),
        ):
            these = [p for p in policies if p in chosen]
            if not these or sw.deadline.passed():
                continue
            with runner_of_kind(om, host_reads=False, after_demand=after) as seg:
                for policy in these:
                    if sw.deadline.passed():
                        sw.record.skipped(f"{policy}@{fraction}/{variant}")
                        continue
                    seg.reset_steps()
                    sw.measure(policy, fraction, variant, sw.workload.on(seg))
    finally:
        om.store.coded = None


def segmented_steps(
    sw: Sweep, fraction: float, policies: list[str], hybrid: bool = False, after_demand: bool = False
) -> None:
    """The same policies with segmented steps (no reads from host memory), on a runner built for them;
    `hybrid`: with hybrid misses (the host computes part of each layer's misses, rates measured now);
    `after_demand`: lookahead copies queued behind each layer's demand copies (MOE_LOOKAHEAD_AFTER_DEMAND)."""
    if not policies:
        return
    variant = "hybrid" if hybrid else "after-demand" if after_demand else "segmented"
    with runner_of_kind(
        sw.workload.runner.om, host_reads=False, hybrid=hybrid, after_demand=after_demand
    ) as seg:
        if hybrid and seg.hybrid is None:
            log("hybrid misses skipped: this model's experts cannot run on the host")
            return
        if hybrid:
            r = seg.hybrid.rates
            log(
                f"hybrid misses: an expert copies in {r.copy_ms:.3f} ms, the host computes a row of it in {r.host_ms:.3f} ms"
            )
        for policy in policies:
            if sw.deadline.passed():
                sw.record.skipped(f"{policy}@{fraction}/{variant}")
                continue
            seg.reset_steps()
            if hybrid:
                seg.hybrid.spent.reset()
            sw.measure(policy, fraction, variant, sw.workload.on(seg))
            if hybrid:  # where the host's time went, against the calibration
                steps = seg.steps.get("graph", 0) + seg.steps.get("eager", 0)
                host = seg.hybrid.spent.summary(steps, seg.hybrid.rates)
                sw.record.data["configs"][-1]["hybrid_host"] = host
                sw.record.write()
                log(
                    f"  host share: {host['experts_per_token']:.1f} experts a token in "
                    f"{host['layer_steps_per_token']:.1f} layers, {host['output_ms_per_token']:.2f} ms computing "
                    f"({host['output_ms_per_pair'] or 0:.3f} ms a pair, calibrated {host['calibrated_ms_per_pair']:.3f}), "
                    f"{host['route_ms_per_token']:.2f} ms of host side a token"
                )
