"""Writes the two Grafana dashboards under `deploy/grafana/dashboards/` from the PromQL kept here.

The JSON files are what Grafana provisions; this script is where they are edited, so every query sits
in one readable place. `python deploy/grafana/dashboards.py` rewrites both files (and their copies under
deploy/k8s/monitoring/dashboards/ for the Grafana sidecar); tests fail when the checked-in JSON differs
from what this script makes. Main-dashboard panels show the series summed over all selected servers
(`pods()`: the pods of a Kubernetes deployment, replicas behind a load balancer) and one per instance.
Ratios follow one rule: `A / (B > 0)`, so an idle server shows "No data" instead of a made-up 0 or a
division by zero.
"""

from __future__ import annotations

import json
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "moe-prometheus"}  # uid set in provisioning/datasources
OUT = Path(__file__).resolve().parent / "dashboards"
# The same files for the Grafana sidecar on Kubernetes (deploy/k8s/monitoring makes ConfigMaps of them).
K8S_OUT = Path(__file__).resolve().parents[1] / "k8s" / "monitoring" / "dashboards"
RI = "$__rate_interval"
INST = 'instance=~"$instance"'


def group(i: str, *labels: str) -> str:
    """The `by` list of a query: `i` is "instance" (one series per pod) or "" (all pods summed)."""
    return ", ".join(x for x in (i, *labels) if x)


def summed(expr: str, by: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


def rate(metric: str, by: str = "instance", window: str = RI, extra: str = "") -> str:
    sel = INST + (f", {extra}" if extra else "")
    return summed(f"rate({metric}{{{sel}}}[{window}])", by)


def gauge(metric: str, by: str = "instance", extra: str = "") -> str:
    sel = (f"{extra}, " if extra else "") + INST
    return summed(f"{metric}{{{sel}}}", by)


def ratio(num: str, den: str) -> str:
    return f"{num}\n/ ({den} > 0)"


def quantile(q: float, metric: str, by: str = "instance", window: str = RI) -> str:
    return f"histogram_quantile({q}, sum by ({group('le', by)}) (rate({metric}_bucket{{{INST}}}[{window}])))"


def hit_rate(by: str = "instance", window: str = RI) -> str:
    return ratio(rate("moe_expert_hits_total", by, window), rate("moe_expert_requests_total", by, window))


def per_token(metric: str, window: str = RI, by: str = "instance") -> str:
    return ratio(rate(metric, by, window), rate("moe_generation_tokens_total", by, window))


def occupancy(by: str = "instance") -> str:
    return ratio(gauge("moe_expert_cache_slots_used", by), gauge("moe_expert_cache_slots_capacity", by))


def pods(*pairs: tuple) -> list[tuple[str, str]]:
    """(make, legend) -> the series summed over every selected pod, then one per pod (`instance`).

    `make(i)` builds the query for grouping `i` ("" or "instance"); the summed series' legend says
    "all" where the per-pod one says {{instance}}. Ratios sum numerator and denominator first, and
    quantiles sum the buckets, so the "all" series is the deployment's own value, not an average."""
    out = []
    for make, legend in pairs:
        out.append((make(""), legend.replace("{{instance}}", "all")))
    for make, legend in pairs:
        out.append((make("instance"), legend))
    return out


def pad_layer(expr: str) -> str:
    """Zero-pads one-digit layer labels ("7" -> "07") so layers sort as text in the heatmap rows."""
    return f'label_replace(\n{expr},\n"layer", "0$1", "layer", "^([0-9])$")'


def with_policy(expr: str) -> str:
    """Adds the `policy` label of moe_policy_info to a per-instance series, keeping only chosen policies."""
    info = 'max by (instance, policy) (moe_policy_info{instance=~"$instance", policy=~"$policy"})'
    return f"(\n{expr}\n)\n* on (instance) group_left (policy)\n{info}"


# Expressions shared by both dashboards.
STALL_PER_TOKEN = per_token("moe_expert_load_stall_seconds_sum")
MISSES_PER_TOKEN = per_token("moe_expert_misses_total")
WASTED_RATIO = ratio(rate("moe_prefetch_wasted_total"), rate("moe_prefetch_issued_total"))
RECALL = ratio(rate("moe_predictor_hits_total"), rate("moe_predictor_routed_total"))
TOKENS_PER_S = rate("moe_generation_tokens_total")
BYTES_PER_S = rate("moe_expert_bytes_copied_total")
OCCUPANCY = occupancy()


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series"
) -> dict:
    t = {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "format": fmt,
    }
    if instant:
        t.update(instant=True, range=False)
    else:
        t.update(instant=False, range=True)
    return t


def targets(*pairs: tuple[str, str]) -> list[dict]:
    return [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(pairs)]


def panel(
    kind: str, title: str, desc: str, tgts: list[dict], unit: str = "short", w: int = 8, h: int = 8, **extra
) -> dict:
    p = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "targets": tgts,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "_size": (w, h),
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    if kind == "stat":
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"]},
            "colorMode": "value",
            "graphMode": "area",
        }
    if unit == "percentunit":
        p["fieldConfig"]["defaults"].update(min=0, max=1)
    p.update(extra)
    return p


def heatmap(title: str, desc: str, expr: str, **extra) -> dict:
    p = panel(
        "heatmap",
        title,
        desc,
        [target(pad_layer(expr), "{{layer}}")],
        unit="percentunit",
        w=12,
        h=10,
        **extra,
    )
    p["options"] = {
        "calculate": False,
        "yAxis": {"axisPlacement": "left", "axisLabel": "layer"},
        "rowsFrame": {"layout": "auto"},
        "color": {"mode": "scheme", "scheme": "RdYlGn", "steps": 64, "min": 0, "max": 1, "exponent": 0.5},
        "cellValues": {"unit": "percentunit", "decimals": 1},
        "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
        "legend": {"show": True},
    }
    return p


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: list[dict]) -> list[dict]:
    """Places panels left to right, wrapping at Grafana's 24 columns; numbers them 1, 2, ..."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24 or p["type"] == "row":
            x, y = 0, y + line_h
            line_h = 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return panels


def variable(name: str, label: str, metric: str) -> dict:
    q = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": q,
        "query": {"query": q, "refId": f"var_{name}"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard(
    uid: str, title: str, desc: str, panels: list[dict], variables: list[dict], links: list[dict]
) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["moe-prefetch"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": links,
        "panels": layout(panels),
    }


def main_dashboard() -> dict:

    def hits_by_source(i: str) -> str:
        return (
            f"{rate('moe_expert_hits_total', group(i, 'source'))}\n"
            f"/ on ({i}) group_left ()\n({rate('moe_expert_requests_total', i)} > 0)"
        )

    panels = [
        row("Overview"),
        panel(
            "stat",
            "Prefetch hit rate",
            "Routed experts found on the GPU (resident or prefetched) / all routed experts.",
            targets(*pods((hit_rate, "{{instance}}"))),
            unit="percentunit",
            w=4,
            h=5,
        ),
        panel(
            "stat",
            "Generated tokens per second",
            "Decode throughput over all requests.",
            targets(*pods((lambda i: rate("moe_generation_tokens_total", i), "{{instance}}"))),
            unit="short",
            w=4,
            h=5,
        ),
        panel(
            "stat",
            "Stall seconds per token",
            "Time spent waiting for expert copies, per generated token.",
            targets(*pods((lambda i: per_token("moe_expert_load_stall_seconds_sum", by=i), "{{instance}}"))),
            unit="s",
            w=4,
            h=5,
        ),
        panel(
            "gauge",
            "Cache occupancy",
            "Expert cache slots holding an expert / slots on the GPU.",
            targets(*pods((occupancy, "{{instance}}"))),
            unit="percentunit",
            w=4,
            h=5,
        ),
        panel(
            "stat",
            "Server and engine up",
            "up: Prometheus reaches /metrics. healthy: the engine can serve (/health is 200).",
            targets(
                *pods(
                    (lambda i: gauge("up", i, 'job="moe-prefetch"'), "up {{instance}}"),
                    (lambda i: gauge("moe_engine_healthy", i), "healthy {{instance}}"),
                )
            ),
            unit="bool_yes_no",
            w=4,
            h=5,
        ),
        panel(
            "table",
            "Active policy",
            "moe_policy_info: the prefetch policy, model and predictor bundle each server runs.",
            [target(f"moe_policy_info{{{INST}}}", ref="A", instant=True, fmt="table")],
            w=16,
            h=4,
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
        panel(
            "stat",
            "Pods per policy",
            "Servers (pods, replicas) running each prefetch policy: count of moe_policy_info by policy.",
            targets((f"count by (policy) (moe_policy_info{{{INST}}})", "{{policy}}")),
            w=8,
            h=4,
        ),
        row("Expert cache and prefetch"),
        panel(
            "timeseries",
            "Prefetch hit rate",
            "Overall per server, and split by where the hit came from: resident (already cached) or prefetched (brought by a prediction).",
            targets(*pods((hit_rate, "{{instance}}"), (hits_by_source, "{{source}} {{instance}}"))),
            unit="percentunit",
            w=12,
            h=10,
        ),
        heatmap(
            "Prefetch hit rate per layer",
            "Hit rate of each MoE layer (rows) over time; red layers are the ones the predictors or the cache serve badly.",
            hit_rate(by="layer"),
        ),
        panel(
            "timeseries",
            "Misses per generated token",
            "Demand loads (experts not on the GPU when the router picked them) per generated token.",
            targets(*pods((lambda i: per_token("moe_expert_misses_total", by=i), "{{instance}}"))),
            w=8,
        ),
        panel(
            "timeseries",
            "Stall seconds per generated token",
            "Seconds the compute stream waited on expert copies, per generated token.",
            targets(*pods((lambda i: per_token("moe_expert_load_stall_seconds_sum", by=i), "{{instance}}"))),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Expert-load stall p50 / p99",
            "Wait for expert copies in one layer-step (0 when every expert was already there).",
            targets(
                *pods(
                    (lambda i: quantile(0.5, "moe_expert_load_stall_seconds", i), "p50 {{instance}}"),
                    (lambda i: quantile(0.99, "moe_expert_load_stall_seconds", i), "p99 {{instance}}"),
                )
            ),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Host-to-device bytes per second by reason",
            "Expert bytes moved to the GPU: prefetch (ahead of time, overlapped), demand (a stall), and with streamed "
            "decode steps host_read (missed experts read by the kernels over PCIe) and fill (copied in behind the step).",
            targets(
                *pods(
                    (
                        lambda i: rate("moe_expert_bytes_copied_total", group(i, "reason")),
                        "{{reason}} {{instance}}",
                    )
                )
            ),
            unit="Bps",
            w=8,
        ),
        panel(
            "timeseries",
            "Wasted-prefetch ratio",
            "Prefetched experts the router did not pick / prefetches issued. High = copy bandwidth spent for nothing.",
            targets(
                *pods(
                    (
                        lambda i: ratio(
                            rate("moe_prefetch_wasted_total", i), rate("moe_prefetch_issued_total", i)
                        ),
                        "{{instance}}",
                    )
                )
            ),
            unit="percentunit",
            w=8,
        ),
        panel(
            "timeseries",
            "Prefetches per second",
            "Prefetch copies issued, and how many were used or wasted.",
            targets(
                *pods(
                    (lambda i: rate("moe_prefetch_issued_total", i), "issued {{instance}}"),
                    (lambda i: rate("moe_prefetch_used_total", i), "used {{instance}}"),
                    (lambda i: rate("moe_prefetch_wasted_total", i), "wasted {{instance}}"),
                )
            ),
            unit="ops",
            w=8,
        ),
        panel(
            "timeseries",
            "Online predictor recall",
            "Routed experts the prediction contained / routed experts with a prediction: the predictors' accuracy on live traffic.",
            targets(
                *pods(
                    (
                        lambda i: ratio(
                            rate("moe_predictor_hits_total", i), rate("moe_predictor_routed_total", i)
                        ),
                        "{{instance}}",
                    )
                )
            ),
            unit="percentunit",
            w=8,
        ),
        panel(
            "timeseries",
            "Prediction latency p50 / p99",
            "Host time to run one layer's predictor and policy; it must stay well below the attention it overlaps.",
            targets(
                *pods(
                    (lambda i: quantile(0.5, "moe_prediction_latency_seconds", i), "p50 {{instance}}"),
                    (lambda i: quantile(0.99, "moe_prediction_latency_seconds", i), "p99 {{instance}}"),
                )
            ),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Expert cache slots",
            "Slots holding an expert and slots on the GPU.",
            targets(
                *pods(
                    (lambda i: gauge("moe_expert_cache_slots_used", i), "used {{instance}}"),
                    (lambda i: gauge("moe_expert_cache_slots_capacity", i), "capacity {{instance}}"),
                )
            ),
            w=8,
        ),
        panel(
            "timeseries",
            "Decode steps per second by kind",
            "streamed: one CUDA graph, missing experts read from host memory; segmented: graph segments, the host "
            "copies each layer's experts in first (many misses per step); whole: one graph, every expert resident; "
            "eager: no graph (CPU, capture off, or the first step of a shape).",
            targets(
                *pods((lambda i: rate("moe_decode_steps_total", group(i, "kind")), "{{kind}} {{instance}}"))
            ),
            unit="ops",
            w=8,
        ),
        panel(
            "timeseries",
            "Segmented steps: host time by phase",
            "Share of wall time the engine thread spends in each phase of segmented decode steps. route_wait and "
            "predict_wait: waiting for the GPU (its copies and compute); route: the cache making a layer's experts "
            "resident (its demand copies issued); predict_issue: a prediction becoming copies; launch: graph "
            "launches. Where route or predict_issue is large, the host, not PCIe, paces the step.",
            targets(
                *pods(
                    (
                        lambda i: rate("moe_segmented_host_seconds_total", group(i, "phase")),
                        "{{phase}} {{instance}}",
                    )
                )
            ),
            unit="percentunit",
            w=8,
        ),
        panel(
            "timeseries",
            "Garbage-collector pause p99 by generation",
            "Python's collector passes in the server process: every thread, the engine's included, waits while "
            "one runs. Generation 2 is a full pass; the heap is frozen at start, so it walks only what serving "
            "allocated since.",
            targets(
                *pods(
                    (
                        lambda i: quantile(0.99, "moe_gc_pause_seconds", group(i, "generation")),
                        "gen {{generation}} {{instance}}",
                    )
                )
            ),
            unit="s",
            w=8,
        ),
        row("Requests"),
        panel(
            "timeseries",
            "Tokens per second",
            "Prompt tokens (prefill) and generated tokens (decode) per second.",
            targets(
                *pods(
                    (lambda i: rate("moe_prompt_tokens_total", i), "prompt {{instance}}"),
                    (lambda i: rate("moe_generation_tokens_total", i), "generated {{instance}}"),
                )
            ),
            w=8,
        ),
        panel(
            "timeseries",
            "Time to first token p50 / p99",
            "From a request's arrival to its first generated token.",
            targets(
                *pods(
                    (
                        lambda i: quantile(0.5, "moe_request_time_to_first_token_seconds", i),
                        "p50 {{instance}}",
                    ),
                    (
                        lambda i: quantile(0.99, "moe_request_time_to_first_token_seconds", i),
                        "p99 {{instance}}",
                    ),
                )
            ),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Time per output token p50 / p99",
            "Between consecutive generated tokens of a request.",
            targets(
                *pods(
                    (
                        lambda i: quantile(0.5, "moe_request_time_per_output_token_seconds", i),
                        "p50 {{instance}}",
                    ),
                    (
                        lambda i: quantile(0.99, "moe_request_time_per_output_token_seconds", i),
                        "p99 {{instance}}",
                    ),
                )
            ),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Running and waiting requests",
            "Requests being decoded now, and requests queued for a slot.",
            targets(
                *pods(
                    (lambda i: gauge("moe_requests_running", i), "running {{instance}}"),
                    (lambda i: gauge("moe_requests_waiting", i), "waiting {{instance}}"),
                )
            ),
            w=8,
        ),
        panel(
            "timeseries",
            "End-to-end latency and queue time p99",
            "From arrival to the last token, and from arrival to first being scheduled.",
            targets(
                *pods(
                    (lambda i: quantile(0.99, "moe_request_e2e_latency_seconds", i), "e2e p99 {{instance}}"),
                    (lambda i: quantile(0.99, "moe_request_queue_time_seconds", i), "queue p99 {{instance}}"),
                )
            ),
            unit="s",
            w=8,
        ),
        panel(
            "timeseries",
            "Finished requests per second by reason",
            "stop, length, abort (client left) or error.",
            targets(
                *pods(
                    (
                        lambda i: rate("moe_requests_total", group(i, "finish_reason")),
                        "{{finish_reason}} {{instance}}",
                    )
                )
            ),
            unit="reqps",
            w=8,
        ),
    ]
    links = [
        {"title": "Policy comparison", "type": "link", "url": "/d/moe-prefetch-compare", "targetBlank": False}
    ]
    return dashboard(
        "moe-prefetch",
        "moe-prefetch",
        "Expert cache, prefetch and request metrics of moe-prefetch servers.",
        panels,
        [variable("instance", "Instance", "moe_engine_healthy")],
        links,
    )


def comparison_dashboard() -> dict:
    rng = "$__range"
    columns = [
        ("Hit rate", hit_rate(window=rng), "percentunit"),
        ("Stall s / token", per_token("moe_expert_load_stall_seconds_sum", rng), "s"),
        ("Misses / token", per_token("moe_expert_misses_total", rng), "short"),
        (
            "Predictor recall",
            ratio(
                rate("moe_predictor_hits_total", window=rng), rate("moe_predictor_routed_total", window=rng)
            ),
            "percentunit",
        ),
        (
            "Wasted prefetch",
            ratio(
                rate("moe_prefetch_wasted_total", window=rng), rate("moe_prefetch_issued_total", window=rng)
            ),
            "percentunit",
        ),
        ("Tokens / s", rate("moe_generation_tokens_total", window=rng), "short"),
        ("TTFT p99", quantile(0.99, "moe_request_time_to_first_token_seconds", window=rng), "s"),
        ("TPOT p99", quantile(0.99, "moe_request_time_per_output_token_seconds", window=rng), "s"),
    ]
    table_targets, rename, overrides = [], {}, []
    for i, (name, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + i)
        table_targets.append(target(with_policy(expr), ref=ref, instant=True, fmt="table"))
        rename[f"Value #{ref}"] = name
        overrides.append(
            {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        )
    table = panel(
        "table",
        "Side by side over the dashboard's time range",
        "One row per deployment (instance) with its policy; every column is computed over the selected time range.",
        table_targets,
        w=24,
        h=7,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": rename,
                    "indexByName": {"instance": 0, "policy": 1},
                },
            },
        ],
    )
    table["fieldConfig"]["overrides"] = overrides
    legend = "{{policy}} · {{instance}}"

    def overlay(title: str, desc: str, expr: str, unit: str = "short") -> dict:
        return panel("timeseries", title, desc, targets((with_policy(expr), legend)), unit=unit, w=12, h=8)

    panels = [
        row("All deployments"),
        table,
        overlay(
            "Prefetch hit rate by policy",
            "Hit rate of each deployment, one line per policy and instance.",
            hit_rate(),
            "percentunit",
        ),
        overlay(
            "Stall seconds per token by policy",
            "Expert-load stall per generated token.",
            STALL_PER_TOKEN,
            "s",
        ),
        overlay("Generated tokens per second by policy", "Decode throughput.", TOKENS_PER_S),
        overlay("Misses per token by policy", "Demand loads per generated token.", MISSES_PER_TOKEN),
        overlay(
            "Time per output token p99 by policy",
            "Between consecutive tokens of a request.",
            quantile(0.99, "moe_request_time_per_output_token_seconds"),
            "s",
        ),
        overlay(
            "Time to first token p99 by policy",
            "From arrival to the first token.",
            quantile(0.99, "moe_request_time_to_first_token_seconds"),
            "s",
        ),
        overlay(
            "Online predictor recall by policy", "Predictor accuracy on live traffic.", RECALL, "percentunit"
        ),
        overlay(
            "Wasted-prefetch ratio by policy",
            "Prefetched but not routed / prefetched.",
            WASTED_RATIO,
            "percentunit",
        ),
        overlay(
            "Host-to-device bytes per second by policy",
            "All expert copies, prefetch and demand.",
            BYTES_PER_S,
            "Bps",
        ),
        overlay(
            "Expert cache occupancy by policy", "Slots used / slots on the GPU.", OCCUPANCY, "percentunit"
        ),
        row("Per deployment, side by side"),
        heatmap(
            "Hit rate per layer: $instance",
            "One heatmap per selected instance, placed side by side.",
            hit_rate(by="layer"),
            repeat="instance",
            repeatDirection="h",
            maxPerRow=2,
        ),
        panel(
            "timeseries",
            "Stall p50 / p99: $instance",
            "Expert-load stall per layer-step, one panel per instance.",
            targets(
                (quantile(0.5, "moe_expert_load_stall_seconds"), "p50"),
                (quantile(0.99, "moe_expert_load_stall_seconds"), "p99"),
            ),
            unit="s",
            w=12,
            h=8,
            repeat="instance",
            repeatDirection="h",
            maxPerRow=2,
        ),
    ]
    links = [{"title": "moe-prefetch", "type": "link", "url": "/d/moe-prefetch", "targetBlank": False}]
    variables = [
        variable("instance", "Instance", "moe_engine_healthy"),
        variable("policy", "Policy", "moe_policy_info"),
    ]
    return dashboard(
        "moe-prefetch-compare",
        "moe-prefetch: policy comparison",
        "Deployments side by side (by instance and policy): run one server per policy and add each to the scrape targets.",
        panels,
        variables,
        links,
    )


def render() -> dict[str, str]:
    """File name -> JSON text of each dashboard."""
    return {
        "moe-prefetch.json": json.dumps(main_dashboard(), indent=2) + "\n",
        "policy-comparison.json": json.dumps(comparison_dashboard(), indent=2, ensure_ascii=False) + "\n",
    }


def main() -> None:
    for out in (OUT, K8S_OUT):
        out.mkdir(parents=True, exist_ok=True)
        for name, text in render().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
