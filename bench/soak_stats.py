"""The soak's arithmetic: percentiles, Prometheus text parsing, and the checks of one concurrency level.

No I/O and no third-party imports: `level_record` turns the client outcomes of one level and the two
/metrics scrapes around it into the record fields (throughput, TTFT and inter-token percentiles,
error counts, the /metrics consistency verdict and what made it fail).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Outcome:
    """What the client saw of one request (well-formed or bad)."""

    name: str  # "chat" | "completion" | "responses" | "bad:<name>"
    key: str | None  # Spec.key for greedy comparisons
    stream: bool
    greedy: bool
    max_tokens: int
    sent: float
    end: float = 0.0
    status: int | None = None
    error: str | None = None  # 5xx | connection | status | lost | truncated | bad_accepted
    detail: str = ""
    finish: str | None = None
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    chunk_times: list[float] = field(default_factory=list)
    done_seen: bool = False
    disconnected: bool = False
    bad: bool = False
    reached_engine: bool = False  # a bad body answered 200: the engine finished it


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            continue
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def label_values(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n == name:
            for k, val in ls:
                if k == label:
                    out[val] = out.get(val, 0.0) + v
    return out


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def check_metrics(before: dict, after: dict, outs: list[Outcome]) -> tuple[bool, list[str], dict]:
    """The server's counters against what the clients saw. Returns (consistent, problems, deltas)."""

    def d(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    engine = [o for o in outs if not o.bad or o.reached_engine]
    seen = {
        r: sum(1 for o in engine if o.finish == r and not o.disconnected and o.error is None)
        for r in ("stop", "length")
    }
    dropped = sum(1 for o in engine if o.disconnected or o.error in ("lost", "connection"))
    deltas = {
        "stop": d("moe_requests_total", finish_reason="stop"),
        "length": d("moe_requests_total", finish_reason="length"),
        "abort": d("moe_requests_total", finish_reason="abort"),
        "error": d("moe_requests_total", finish_reason="error"),
        "generation_tokens": d("moe_generation_tokens_total"),
        "prompt_tokens": d("moe_prompt_tokens_total"),
    }
    problems = []
    if deltas["error"]:
        problems.append(f"moe_requests_total{{finish_reason=error}} rose by {deltas['error']:.0f}")
    for r in ("stop", "length"):
        if deltas[r] < seen[r]:
            problems.append(f"finish_reason={r}: metrics +{deltas[r]:.0f}, clients saw {seen[r]}")
    if deltas["abort"] > dropped:
        problems.append(
            f"finish_reason=abort: metrics +{deltas['abort']:.0f}, clients dropped only {dropped}"
        )
    counted = deltas["stop"] + deltas["length"] + deltas["abort"]
    expected = seen["stop"] + seen["length"] + dropped
    if not any(o.error in ("5xx", "status") for o in engine) and counted != expected:
        problems.append(f"finished requests: metrics +{counted:.0f}, clients {expected}")
    tokens = sum(o.completion_tokens for o in outs)
    if deltas["generation_tokens"] < tokens:
        problems.append(f"moe_generation_tokens_total +{deltas['generation_tokens']:.0f} < {tokens} received")
    prompt = sum(o.prompt_tokens or 0 for o in engine if o.error is None and not o.disconnected)
    if deltas["prompt_tokens"] < prompt:
        problems.append(f"moe_prompt_tokens_total +{deltas['prompt_tokens']:.0f} < {prompt} in usage")
    for gauge in ("moe_requests_running", "moe_requests_waiting"):
        if metric(after, gauge):
            problems.append(f"{gauge} = {metric(after, gauge):.0f} after the level")
    return not problems, problems, deltas


def cache_deltas(before: dict, after: dict) -> dict:
    lookups = metric(after, "moe_expert_requests_total") - metric(before, "moe_expert_requests_total")
    hits = metric(after, "moe_expert_hits_total") - metric(before, "moe_expert_hits_total")
    a = label_values(after, "moe_decode_steps_total", "kind")
    b = label_values(before, "moe_decode_steps_total", "kind")
    steps = {k: int(v - b.get(k, 0.0)) for k, v in a.items() if v - b.get(k, 0.0)}
    ia = label_values(after, "moe_prefetch_issued_total", "layer")
    ib = label_values(before, "moe_prefetch_issued_total", "layer")
    issued = {k: int(v - ib.get(k, 0.0)) for k, v in sorted(ia.items(), key=lambda kv: int(kv[0]))}
    used = metric(after, "moe_prefetch_used_total") - metric(before, "moe_prefetch_used_total")
    return {
        "hit_rate": hits / lookups if lookups else None,
        "decode_steps": steps,
        "prefetch_issued_by_layer": issued,  # by decoder layer: a lookahead of d issues none for the first d
        "prefetch_used": int(used),
    }


def level_record(outs: list[Outcome]) -> dict:
    """Throughput, latency percentiles and error counts of one level's outcomes."""
    good = [o for o in outs if not o.bad]
    streams = [o for o in good if o.stream]
    ttft = [o.chunk_times[0] - o.sent for o in streams if o.chunk_times]
    itl = [g for o in streams for g in _gaps(o.chunk_times)]
    lat = [o.end - o.sent for o in good if o.error is None and not o.disconnected]
    tokens = sum(o.completion_tokens for o in outs)
    span = (max(o.end for o in outs) - min(o.sent for o in outs)) if outs else 0.0
    bad = [o for o in outs if o.bad]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "requests": len(good),
        "requests_by_kind": {k: sum(o.name == k for o in good) for k in ("chat", "completion", "responses")},
        "streams": len(streams),
        "disconnects": sum(o.disconnected for o in good),
        "completion_tokens": tokens,
        "wall_s": round(span, 3),
        "tok_s": round(tokens / span, 2) if span > 0 else None,
        "ttft_p50": r(percentile(ttft, 50)),
        "ttft_p99": r(percentile(ttft, 99)),
        "itl_p50": r(percentile(itl, 50)),
        "itl_p99": r(percentile(itl, 99)),
        "latency_p50": r(percentile(lat, 50)),
        "latency_p99": r(percentile(lat, 99)),
        "errors_5xx": sum(o.error == "5xx" for o in outs),
        "errors_connection": sum(o.error == "connection" for o in outs),
        "errors_status": sum(o.error == "status" for o in outs),
        "lost_streams": sum(o.error == "lost" for o in outs),
        "truncated_streams": sum(o.error == "truncated" for o in outs),
        "bad_requests_sent": len(bad),
        "bad_requests_4xx": sum(1 for o in bad if o.status is not None and 400 <= o.status < 500),
        "bad_requests_200": sum(1 for o in bad if o.status == 200),
        "bad_requests_accepted_wrongly": sum(o.error == "bad_accepted" for o in bad),
    }


def error_count(rec: dict) -> int:
    keys = ("errors_5xx", "errors_connection", "errors_status", "lost_streams", "truncated_streams")
    return sum(int(rec.get(k) or 0) for k in keys) + int(rec.get("bad_requests_accepted_wrongly") or 0)


def error_examples(outs: list[Outcome], limit: int = 5) -> list[str]:
    return [f"{o.name}: {o.error} {o.status or ''} {o.detail}"[:300] for o in outs if o.error][:limit]


def flat(values: list[float | None], baseline: float | None, rel: float, abs_mb: float) -> bool | None:
    """Whether the last value is within max(rel * baseline, abs_mb) of `baseline`."""
    vals = [v for v in values if v is not None]
    if not vals or baseline is None:
        return None
    return abs(vals[-1] - baseline) <= max(rel * baseline, abs_mb)
