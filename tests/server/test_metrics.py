"""/metrics serves the engine's Prometheus exposition: request and expert-cache metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def test_metrics_lists_request_and_cache_metrics(live):
    live.client.chat.completions.create(
        model="fake-moe", messages=[{"role": "user", "content": "m"}], max_tokens=8
    )
    r = live.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "moe_request_time_to_first_token_seconds",
        "moe_request_time_per_output_token_seconds",
        "moe_request_e2e_latency_seconds",
        "moe_request_prompt_tokens",
        "moe_request_generation_tokens",
        "moe_requests_running",
        "moe_requests_waiting",
        "moe_expert_requests",
        "moe_expert_hits",
    ):
        assert name in families, name
    assert "moe_expert_requests_total" in r.text
    ttft_count = [
        s.value
        for s in families["moe_request_time_to_first_token_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert ttft_count[0] >= 1
    finished = {
        s.labels["finish_reason"]: s.value
        for s in families["moe_requests"].samples
        if s.name == "moe_requests_total"
    }
    assert finished.get("length", 0) >= 1
