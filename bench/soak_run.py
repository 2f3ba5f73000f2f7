"""The soak's plan loop: one server per configuration, its concurrency levels, its probe, its records.

`run_plan` starts configurations while the deadline allows; `run_config` owns one `moe-prefetch serve`
child from start to exit code and returns its records: one per concurrency level, one for the
configuration (start-up, the server's MOE_* settings and the policy and bundle it reports, admission probe,
memory trend, /health after, exit code, error total).
"""

from __future__ import annotations

import asyncio
import shlex
import time
import traceback

import httpx

from bench.soak_client import admission_probe, run_level
from bench.soak_report import HEADER, table_row
from bench.soak_server import Server
from bench.soak_stats import cache_deltas, check_metrics, error_count, error_examples, flat, level_record
from bench.soak_stats import parse_prometheus as parse
from bench.soak_workload import Spec

RESERVE_S = 25.0  # kept back at the end of a configuration: probe, /health, SIGTERM


async def _get(base: str, path: str) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(base_url=base, timeout=15.0) as http:
            return await http.get(path)
    except httpx.HTTPError:
        return None


async def _scrape(base: str) -> dict:
    res = await _get(base, "/metrics")
    return parse(res.text) if res is not None and res.status_code == 200 else {}


async def _wait_idle(base: str, bound: float) -> int | None:
    """Until /health reports nothing running or waiting (aborts are recorded by then); bounded. Returns the
    last /health status: 200 idle, 0 still busy at the bound, another status or None when unhealthy."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        res = await _get(base, "/health")
        if res is None or res.status_code != 200:
            return None if res is None else res.status_code
        body = res.json()
        if not body.get("running") and not body.get("waiting"):
            await asyncio.sleep(0.05)
            return 200
        await asyncio.sleep(0.1)
    return 0


def _ok_greedy(o) -> bool:
    return o.greedy and o.key is not None and o.error is None and not o.disconnected and o.finish is not None


def _memory_summary(samples: list[dict], baseline_index: int) -> dict:
    out = {}
    for key, rel, abs_mb in (("rss_mb", 0.10, 256.0), ("gpu_mb", 0.02, 128.0)):
        vals = [s[key] for s in samples]
        got = [v for v in vals if v is not None]
        base = vals[baseline_index] if 0 <= baseline_index < len(vals) else None
        out[key] = {
            "first": got[0] if got else None,
            "last": got[-1] if got else None,
            "max": max(got) if got else None,
            "baseline": base,
            "flat": flat(vals, base, rel, abs_mb),
        }
    out["gpu_source"] = samples[-1]["gpu_source"] if samples else None
    return out


def log_name(conf) -> str:
    """The server log's file name: 50pct_exact+2_segmented.log for 50%/exact+2/segmented."""
    return f"{conf.name.replace('/', '_').replace('%', 'pct')}.log"


def _server_info(samples: dict) -> dict[str, str]:
    """The labels of the server's `moe_policy_info` sample (policy, model, predictors, ...)."""
    for (name, labels), _ in samples.items():
        if name == "moe_policy_info":
            return dict(labels)
    return {}


def _check_server(env: dict[str, str], info: dict[str, str]) -> list[str]:
    """What the server reports serving (/metrics) against what it was started with."""
    problems = []
    if info.get("policy") != env["MOE_POLICY"]:
        problems.append(f"server reports policy {info.get('policy')!r}, started with {env['MOE_POLICY']!r}")
    if "MOE_PREDICTORS" in env and info.get("predictors") != env["MOE_PREDICTORS"]:
        problems.append(
            f"server reports bundle {info.get('predictors')!r}, started with {env['MOE_PREDICTORS']!r}"
        )
    full = float(env.get("MOE_EXPERT_CACHE_FRACTION") or 0) >= 1.0  # every expert resident: nothing coded
    want = "true" if env.get("MOE_CODED_EXPERTS") == "true" and not full else "false"
    if info.get("coded_copies", "false") != want:
        problems.append(f"server reports coded copies {info.get('coded_copies')!r}, expected {want!r}")
    return problems


def _base(args, conf) -> dict:
    return dict(
        shape=args.shape,
        configuration=conf.name,
        cache_fraction=conf.fraction,
        policy=conf.policy,
        steps=conf.steps,
        coded=conf.coded,
        dtype=args.dtype,
    )


async def run_config(args, run, conf, workload, ctx: dict, deadline: float, first_refs: dict | None):
    """(records, errors, greedy references of the concurrency-1 level) of one configuration. A failure of
    the soak's own code is recorded as an error of the configuration; the server never outlives it."""
    needs = conf.server_policy in ctx["predictor_policies"]
    logs = args.out / f"serve_soak_{args.shape}_logs"
    server = Server(
        conf.env(ctx["ckpt"], ctx["bundles"], args, needs),
        logs / log_name(conf),
        wrapper=shlex.split(args.server_wrapper),
    )
    try:
        return await _drive(server, args, run, conf, workload, ctx, deadline, first_refs)
    except Exception:
        tb = traceback.format_exc()
        run.say(f"{conf.name}: SOAK SCRIPT ERROR\n{tb}")
        code, killed = await asyncio.to_thread(server.stop, 30.0)
        cfg = dict(
            record="config", **_base(args, conf), errors=1, errors_total=1, exit_code=code, killed=killed
        )
        cfg["notes"] = [f"soak script error:\n{tb[-3000:]}", server.log_tail(20)]
        return [cfg], 1, None
    finally:
        if server.alive():
            await asyncio.to_thread(server.stop, 30.0)


async def _drive(
    server: Server, args, run, conf, workload, ctx: dict, deadline: float, first_refs: dict | None
):
    base = _base(args, conf)
    cfg = dict(record="config", **base, errors=0, notes=[], server_log=str(server.log_path))
    records: list[dict] = []
    try:
        await asyncio.to_thread(server.start, max(10.0, min(args.start_timeout, deadline - time.monotonic())))
    except RuntimeError as err:
        server.stop(10)
        cfg.update(errors=1, notes=[f"start-up failed: {err}"[-2000:]])
        run.say(f"{conf.name}: START-UP FAILED\n{err}")
        return [cfg], 1, None
    cfg["startup_s"] = round(server.started_s or 0.0, 1)
    skip = ("MOE_HOST", "MOE_PORT")
    cfg["server_env"] = {k: v for k, v in server.env.items() if k.startswith("MOE_") and k not in skip}
    cfg["server_info"] = _server_info(await _scrape(server.base))
    for problem in _check_server(cfg["server_env"], cfg["server_info"]):
        cfg["errors"] += 1
        cfg["notes"].append(problem)
        run.say(f"{conf.name}: {problem}")
    models = await _get(server.base, "/v1/models")
    ok = models is not None and models.status_code == 200
    model = models.json()["data"][0]["id"] if ok else ctx["ckpt"].name  # the folder's name by default
    run.say(f"{conf.name}: serving {model} after {cfg['startup_s']}s (pid {server.pid})")
    print(HEADER, flush=True)
    samples = [server.memory()]
    refs: dict[str, str] = {}
    replays: list[Spec] = []
    bads = workload.bad_requests()
    levels = args.concurrency
    prev: dict | None = None
    prev_c = 1
    idle: int | None = 200
    baseline_index = -1
    for k, c in enumerate(levels):
        if not server.alive():
            cfg["notes"].append(f"server died before level {c}:\n{server.log_tail()}")
            cfg["errors"] += 1
            break
        n = ctx["requests"][c]
        budget = min(args.level_seconds, deadline - time.monotonic() - RESERVE_S)
        notes: list[str] = []
        if budget < 2:
            cfg["notes"].append(f"deadline: levels from {c} not run")
            break
        if prev and prev["requests"] and prev["wall_s"]:  # what the last level's pace serves in the budget
            rows = args.max_running
            per_req = prev["wall_s"] / prev["requests"] * min(prev_c, rows) / min(c, rows)
            fit = int(budget / max(per_req, 1e-3))
            if fit < n:
                n = max(fit, min(n, rows + 2))  # still more clients than rows: the queue is part of the test
                notes.append(f"cut to {n} requests to fit {budget:.0f}s ({per_req:.2f}s per request before)")
        items = workload.level(c, n, replays, bads[k :: len(levels)])
        before = await _scrape(server.base)
        mem0 = server.memory()
        drain = max(15.0, min(args.request_timeout + 10, deadline - time.monotonic() - budget))
        outs, level_notes = await run_level(server.base, model, items, c, budget, args.request_timeout, drain)
        idle = await _wait_idle(server.base, 20.0)
        after = await _scrape(server.base)
        mem1 = server.memory()
        samples.append(mem1)
        if baseline_index < 0 and (c >= args.max_running or k == len(levels) - 1):
            baseline_index = len(samples) - 1
        stats = level_record(outs)
        consistent, problems, deltas = (
            check_metrics(before, after, outs) if before and after else (False, ["no /metrics"], {})
        )
        if idle != 200:
            problems.append("requests still running 20 s after the level" if idle == 0 else f"/health {idle}")
            consistent = False
        good = [o for o in outs if _ok_greedy(o)]
        if k == 0 and c == 1:
            refs = {o.key: o.text for o in good}
            replays = [
                s for s in items if isinstance(s, Spec) and s.temperature == 0 and s.disconnect_after is None
            ]
            compared = equal = 0
        else:
            pairs = [(o.text, refs[o.key]) for o in good if o.key in refs]
            compared, equal = len(pairs), sum(a == b for a, b in pairs)
        rec = {
            "record": "level",
            **base,
            "concurrency": c,
            **stats,
            "greedy_compared": compared,
            "greedy_equal": equal,
            "rss_mb_start": mem0["rss_mb"],
            "rss_mb_end": mem1["rss_mb"],
            "rss_mb_max": max((m["rss_mb"] for m in (mem0, mem1) if m["rss_mb"] is not None), default=None),
            "gpu_mb_start": mem0["gpu_mb"],
            "gpu_mb_end": mem1["gpu_mb"],
            "gpu_mb_max": max((m["gpu_mb"] for m in (mem0, mem1) if m["gpu_mb"] is not None), default=None),
            "gpu_mb_source": mem1["gpu_source"],
            "metrics_consistent": consistent,
            "metrics_problems": problems,
            "metrics_deltas": deltas,
            **(cache_deltas(before, after) if before and after else {}),
            "error_examples": error_examples(outs),
            "notes": notes + level_notes,
        }
        rec["errors"] = error_count(stats) + (0 if consistent else 1)
        records.append(rec)
        print(table_row(rec), flush=True)
        for line in rec["error_examples"] + problems:
            print(f"    {line}", flush=True)
        prev, prev_c = stats, c
        if idle not in (0, 200):
            cfg["notes"].append(f"/health {idle} after level {c}: later levels and the probe not run")
            break
    if server.alive() and deadline - time.monotonic() > 10 and idle in (0, 200):
        short = min(workload.texts.short, key=len)
        bound = min(args.request_timeout, max(10.0, deadline - time.monotonic() - 5))
        probe, probe_outs = await admission_probe(server.base, model, short, ctx["long"], bound)
        probe["errors"] = sum(o.error is not None for o in probe_outs)
        probe["error_examples"] = error_examples(probe_outs)
        cfg["admission"] = probe
        cfg["errors"] += probe["errors"]
        run.say(
            f"{conf.name}: admission of a {probe['long_prompt_tokens']}-token prompt: itl p99 "
            f"{probe['itl_p99_before']} s before, {probe['itl_p99_during']} s during "
            f"(max {probe['itl_max_during']})"
        )
    health = await _get(server.base, "/health")
    cfg["health_after"] = health.status_code if health is not None else None
    if cfg["health_after"] != 200:
        cfg["errors"] += 1
        cfg["notes"].append(f"/health after: {cfg['health_after']} {health.text[:300] if health else ''}")
    samples.append(server.memory())
    code, killed = await asyncio.to_thread(server.stop, 30.0)
    clean = server.clean_exit(code, killed)
    cfg.update(
        exit_code=code, killed=killed, clean_exit=clean, memory=_memory_summary(samples, baseline_index)
    )
    if not clean:
        cfg["errors"] += 1
        cfg["notes"].append(
            f"server exit code {code}{' after SIGKILL' if killed else ''}:\n{server.log_tail(20)}"
        )
    if first_refs:
        pairs = [(t, first_refs[key]) for key, t in refs.items() if key in first_refs]
        cfg["greedy_vs_first_config"] = {"compared": len(pairs), "equal": sum(a == b for a, b in pairs)}
    level_errors = sum(r["errors"] for r in records)
    cfg["errors_total"] = cfg["errors"] + level_errors
    mem = cfg["memory"]
    run.say(
        f"{conf.name}: exit {code}, health after {cfg['health_after']}, errors {cfg['errors_total']}, "
        f"rss flat {mem['rss_mb']['flat']}, gpu flat {mem['gpu_mb']['flat']}"
    )
    return [*records, cfg], cfg["errors_total"], refs


async def run_plan(args, run, plan, workload, ctx: dict, deadline: float) -> tuple[int, int]:
    """Run the configurations the deadline allows; returns (configurations run, errors)."""
    durations: list[float] = []
    first_refs: dict | None = None
    configs = errors = 0
    for i, conf in enumerate(plan):
        left = deadline - time.monotonic()
        if left < 30 or (durations and left < max(durations)):
            rest = [c.name for c in plan[i:]]
            run.say(f"deadline: {left:.0f}s left, not started: {', '.join(rest)}")
            run.put("not_started", rest)
            break
        t0 = time.monotonic()
        records, errs, refs = await run_config(args, run, conf, workload, ctx, deadline, first_refs)
        durations.append(time.monotonic() - t0)
        records[-1]["wall_s"] = round(durations[-1], 1)
        if first_refs is None and refs:
            first_refs = refs
        configs += 1
        errors += errs
        run.data["records"].extend(records)
        run.write()
    return configs, errors
