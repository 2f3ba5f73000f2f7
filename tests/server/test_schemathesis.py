"""Schemathesis against the REAL server (real engine, built-in model on CPU): no 5xx, and every answer
is one the served OpenAPI document declares (status, content type, body schema).

It drives schemathesis's own engine (what `schemathesis run` runs) on the schema read from the running
server's /openapi.json, so the bounds the fuzzer respects are the ones the server publishes: with a
48-token context `max_tokens` is at most 47 there and every generation is short. Its examples,
coverage (boundary and schema-violating values) and fuzzing phases run with a fixed seed, so CI sends
the same requests on every run. The test prints `schemathesis: sent N requests, F failures`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from engine.api.config import EngineConfig
from tests.server_harness import Live, live_server

CONTEXT = 48
OPERATIONS = {
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/responses",
    "POST /v1/responses/input_tokens",
    "GET /v1/responses/{response_id}",
    "GET /v1/responses/{response_id}/input_items",
    "DELETE /v1/responses/{response_id}",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /health",
    "GET /metrics",
}
CONFIG = """
seed = 20
request-timeout = 30
suppress-health-check = ["all"]
[output.sanitization]
enabled = false  # it would mask max_tokens in the reproduction commands ("token" looks secret)
[generation]
mode = "all"
max-examples = 50
[phases]
examples.enabled = true
coverage.enabled = true
fuzzing.enabled = true
stateful.enabled = false
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
response_headers_conformance.enabled = true
negative_data_rejection.enabled = true
"""


@pytest.fixture(scope="module")
def real_server() -> Iterator[Live]:
    from engine.frontend.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(
        EngineConfig(device="cpu", max_running=4, max_waiting=16, seed=0, max_model_len=CONTEXT)
    )
    with live_server(engine, timeout=60.0) as srv:
        # The harness binds its socket with proto 0, so asyncio leaves Nagle on and every response
        # (headers and body written apart) waits ~40 ms for a delayed ACK; accepted sockets inherit this.
        srv.handle.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield srv


def test_api_conforms_to_its_schema(real_server: Live, capsys):
    config = schemathesis.Config.from_str(CONFIG)
    schema = schemathesis.openapi.from_url(real_server.url + "/openapi.json", config=config)
    started = time.monotonic()
    sent, failures, errors, statuses, phases, operations = 0, [], [], {}, {}, set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(event.recorder.label)
            phase = str(event.phase.value)
            phases[phase] = phases.get(phase, 0) + len(event.recorder.interactions)
            for interaction in event.recorder.interactions.values():
                sent += 1
                if interaction.response is not None:
                    code = interaction.response.status_code
                    statuses[code] = statuses.get(code, 0) + 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        info = check.failure_info
                        failures.append(
                            f"{event.recorder.label} / {check.name}: {info.failure.title}\n"
                            f"{info.failure.message}\n{info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(event)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nschemathesis: sent {sent} requests in {elapsed:.1f} s, {len(failures)} failures, "
            f"by phase {phases}, statuses {dict(sorted(statuses.items()))}"
        )
    assert not errors, errors
    assert not failures, "\n\n".join(failures[:10])
    assert operations >= OPERATIONS and sent > 100
    assert real_server.http.get("/health").status_code == 200
