"""Fixtures for the deployment tests: real servers with traffic, and paths of the deploy files.

`metrics_target` starts the real `moe-prefetch serve` (the built-in model on CPU) once per policy in
`POLICIES`, each as its own process on a free port of 127.0.0.1 with a predictor bundle of the right
fingerprint, and keeps one client thread per server sending chat requests through the `openai` SDK
(bounded in count and time) while the tests scrape and query.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.bundles import builtin_bundle

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# One deployment per policy, to exercise the comparison view; the caches are large enough that the
# untrained test predictors still leave a healthy hit rate (no alert may fire on this traffic).
POLICIES = {"exact": 1.0, "overprovision": 0.9}
MAX_REQUESTS = 400  # per server, a bound on the traffic
MAX_SECONDS = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_binary(name: str) -> str:
    """The binary's path (PATH, or /usr/sbin where Debian puts nginx), or skip the test that needs it."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").is_file() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/system-deps installs it from Debian's packages as root)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return need_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return need_binary("prometheus")


@pytest.fixture(scope="session")
def compose_bin() -> str:
    return need_binary("docker-compose")


@dataclass
class Target:
    address: str  # host:port of the server (and its /metrics)
    policy: str
    proc: subprocess.Popen
    log: Path
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _traffic(self) -> None:
        client = openai.OpenAI(
            base_url=f"http://{self.address}/v1", api_key="unused", max_retries=0, timeout=60
        )
        model = client.models.list().data[0].id
        deadline = time.monotonic() + MAX_SECONDS
        prompts = (
            "Tell me about the sea.",
            "What is a river?",
            "Describe a small town.",
            "Why do birds sing?",
        )
        while not self._stop.is_set() and self.sent < MAX_REQUESTS and time.monotonic() < deadline:
            try:
                stream = self.sent % 2 == 0
                r = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompts[self.sent % len(prompts)]}],
                    max_tokens=24,
                    temperature=0.8,
                    stream=stream,
                )
                if stream:
                    for _ in r:
                        pass
            except openai.OpenAIError as err:
                self.errors.append(f"{type(err).__name__}: {err}")
            self.sent += 1
            self._stop.wait(0.02)
        client.close()

    def start_traffic(self) -> None:
        self._thread = threading.Thread(target=self._traffic, name=f"traffic-{self.policy}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def spawn_serve(port: int, log: Path, **settings: str) -> subprocess.Popen:
    """`moe-prefetch serve` on 127.0.0.1:`port` (CPU, the built-in model unless `settings` say otherwise),
    with only these `MOE_*` settings from the environment, its output in `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(
        MOE_DEVICE="cpu", MOE_HOST="127.0.0.1", MOE_PORT=str(port), MOE_LOG_LEVEL="warning", **settings
    )
    return subprocess.Popen(
        [sys.executable, "-m", "moe_prefetch.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _start_target(policy: str, fraction: float, bundle: Path, workdir: Path) -> Target:
    """`moe-prefetch serve` as a child process, ready (its /health answers 200)."""
    port = free_port()
    log = workdir / f"server-{policy}.log"
    proc = spawn_serve(
        port,
        log,
        MOE_POLICY=policy,
        MOE_PREDICTORS=str(bundle),
        MOE_EXPERT_CACHE_FRACTION=str(fraction),
    )
    target = Target(f"127.0.0.1:{port}", policy, proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"moe-prefetch serve ({policy}) exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"http://{target.address}/health", timeout=2).status_code == 200:
                return target
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    target.stop()
    pytest.fail(f"moe-prefetch serve ({policy}) not healthy within 120 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def metrics_target(tmp_path_factory):
    """Real servers on 127.0.0.1 with traffic flowing, one per policy in POLICIES."""
    workdir = tmp_path_factory.mktemp("servers")
    bundle = builtin_bundle(workdir / "bundle")
    targets: list[Target] = []
    try:
        for policy, fraction in POLICIES.items():
            targets.append(_start_target(policy, fraction, bundle, workdir))
        for t in targets:
            t.start_traffic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(t.sent < 2 for t in targets):
            time.sleep(0.1)
        yield targets
    finally:
        for t in targets:
            t.stop()
    for t in targets:
        assert not t.errors, f"{t.policy}: requests failed: {t.errors[:3]}"
