"""Fixtures for the deployment tests: scrape targets with traffic, and paths of the deploy files.

`metrics_target` yields running `/metrics` endpoints on 127.0.0.1 that have seen traffic. Until the
HTTP server lands, each one is a **simulation**: a stdlib `http.server` thread serving
`engine.metrics.Metrics.exposition()` while a background thread plays decode steps through a real
`CacheCounters` (routing, predictions, prefetches, hits, misses, stalls) and finishes requests. To use
the real server instead, make `_start_target` launch `moe-prefetch serve --port N --policy P` and send
chat requests; the tests only need `Target.address`, `Target.policy` and `Target.stop()`.
"""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.metrics import Metrics
from engine.stats import CacheCounters, RequestStats

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
POLICIES = ("exact", "overprovision")  # one simulated deployment each, to exercise the comparison view


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/system-deps installs it from Debian's packages as root)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _need_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _need_binary("prometheus")


@pytest.fixture(scope="session")
def compose_bin() -> str:
    return _need_binary("docker-compose")


@dataclass
class SimulatedTraffic:
    """Plays decode steps of a 12-layer, 16-expert, top-2 MoE into `metrics`, ~200 steps per second.

    The numbers are made up but keep the engine's invariants: every routed expert is a hit (resident or
    prefetched) or a miss; prefetches are used or wasted; recall counts routed experts the prediction held.
    """

    metrics: Metrics
    policy: str
    seed: int = 0
    layers: int = 12
    experts: int = 16
    top_k: int = 2
    slots: int = 96
    expert_bytes: int = 9_400_000
    counters: CacheCounters = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.counters = CacheCounters(num_layers=self.layers)
        self.counters.slots_capacity = self.slots
        self.metrics.attach_cache(self.counters)
        self.metrics.set_info(policy=self.policy, model="simulated-moe", predictors="simulated-bundle")
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.policy}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _step(self, rng: random.Random, resident: list[set[int]]) -> float:
        """One decode step through every layer; returns the step's stall seconds."""
        c = self.counters
        extra = 2 if self.policy == "overprovision" else 0
        stall_total = 0.0
        for layer in range(self.layers):
            routed = set(rng.sample(range(self.experts), self.top_k))
            predicted = (
                set(routed) if rng.random() < 0.9 else set(rng.sample(range(self.experts), self.top_k))
            )
            predicted |= set(rng.sample(range(self.experts), extra))
            self.metrics.prediction_latency.observe(rng.uniform(5e-5, 3e-4))
            fetched = predicted - resident[layer]
            c.prefetch_issued[layer] += len(fetched)
            c.bytes_prefetch += len(fetched) * self.expert_bytes
            c.routed_scored[layer] += len(routed)
            c.predicted_routed[layer] += len(routed & predicted)
            stall = 0.0
            for e in routed:
                c.requests[layer] += 1
                if e in fetched:
                    c.hits_prefetched[layer] += 1
                    c.prefetch_used[layer] += 1
                elif e in resident[layer]:
                    c.hits_resident[layer] += 1
                else:
                    c.misses[layer] += 1
                    c.bytes_demand += self.expert_bytes
                    stall += rng.uniform(1.5e-4, 4e-4)
            c.prefetch_wasted[layer] += len(fetched - routed)
            resident[layer] = set(list(resident[layer] | routed | predicted)[-(self.slots // self.layers) :])
            self.metrics.stall.observe(stall)
            stall_total += stall
        c.slots_used = sum(len(r) for r in resident)
        return stall_total

    def _run(self) -> None:
        rng = random.Random(self.seed)
        resident: list[set[int]] = [set() for _ in range(self.layers)]
        steps = 0
        while not self._stop.is_set():
            self._step(rng, resident)
            self.metrics.generation_tokens.inc()
            steps += 1
            if steps % 20 == 0:  # a request of 20 tokens finishes
                self.metrics.prompt_tokens.inc(64)
                self.metrics.observe_request(
                    RequestStats(
                        prompt_tokens=64,
                        generation_tokens=20,
                        time_to_first_token=rng.uniform(0.05, 0.3),
                        time_per_output_token=tuple(rng.uniform(0.004, 0.03) for _ in range(19)),
                        e2e_latency=rng.uniform(0.2, 0.8),
                        queue_time=rng.uniform(0.0, 0.05),
                        finish_reason=rng.choice(("stop", "length")),
                    )
                )
            self.metrics.set_queue(running=rng.randint(1, 4), waiting=rng.randint(0, 2))
            self._stop.wait(0.005)


@dataclass
class Target:
    address: str  # host:port of the /metrics endpoint
    policy: str
    _server: ThreadingHTTPServer
    _traffic: SimulatedTraffic

    def stop(self) -> None:
        self._traffic.stop()
        self._server.shutdown()
        self._server.server_close()


def _start_target(policy: str, seed: int) -> Target:
    """A simulated moe-prefetch server (see the module docstring for swapping in the real one)."""
    metrics = Metrics()
    traffic = SimulatedTraffic(metrics, policy, seed=seed)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body, ctype = metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{policy}", daemon=True).start()
    traffic.start()
    host, port = server.server_address[:2]
    return Target(f"{host}:{port}", policy, server, traffic)


@pytest.fixture(scope="session")
def metrics_target():
    """Running /metrics endpoints on 127.0.0.1 with traffic flowing, one per policy in POLICIES."""
    targets = [_start_target(policy, seed) for seed, policy in enumerate(POLICIES)]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(t._traffic.counters.requests[0] == 0 for t in targets):
        time.sleep(0.05)
    yield targets
    for t in targets:
        t.stop()
