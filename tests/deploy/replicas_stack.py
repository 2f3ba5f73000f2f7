"""What tests/deploy/test_replicas.py runs: two `moe-prefetch serve` replicas, nginx in front of them with
the deploy/nginx configuration, a Prometheus scraping both, and streaming clients that record where each
stream went and how it ended."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from bench.soak_client import SDK_HTTP
from tests.deploy.conftest import free_port, spawn_serve, stop_process
from tests.deploy.test_prometheus import (
    Prometheus,
)

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
NAMESPACE = "moe-prefetch"  # what the base's ScaledObject query selects (deploy/k8s)
STREAMS = 64
CLIENT_TIMEOUT = 30.0  # seconds, per read: a stream that stalls this long fails instead of hanging
MAIN_DASHBOARD = "moe-prefetch.json"


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests_total(self) -> float:
        text = httpx.get(f"http://{self.address}/metrics", timeout=5).text
        return sum(float(v) for v in re.findall(r"^moe_requests_total\{[^}]*\} (\S+)$", text, re.M))

    def stop(self) -> None:
        stop_process(self.proc)


def start_replicas(workdir: Path, bundle: Path) -> list[Replica]:
    replicas = []
    for name in ("replica-a", "replica-b"):
        port = free_port()
        log = workdir / f"{name}.log"
        proc = spawn_serve(
            port,
            log,
            MOE_POLICY="exact",
            MOE_PREDICTORS=str(bundle),
            MOE_EXPERT_CACHE_FRACTION="0.9",  # below 1: prefetches are issued, every panel has data
            MOE_MAX_RUNNING="16",
        )
        replicas.append(Replica(name, port, proc, log))
    deadline = time.monotonic() + 120
    for r in replicas:
        while True:
            if r.proc.poll() is not None:
                pytest.fail(f"{r.name} exited with {r.proc.returncode}:\n{r.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://{r.address}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{r.name} not healthy within 120 s:\n{r.log.read_text()[-3000:]}")
            time.sleep(0.2)
    return replicas


def render_nginx_conf(upstreams: list[str], port: int, workdir: Path) -> Path:
    """The shipped config with test ports and paths; the shipped directives are kept as they are."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^(\s*)server \S+:8000( [^;]*);$", text, re.M)
    assert len(servers) == 2, "the shipped upstream lists the two replicas of the profile"
    indent, params = servers[0]
    text = re.sub(r"^\s*server \S+:8000 [^;]*;\n", "", text, flags=re.M)
    lines = "".join(f"{indent}server {u}{params};\n" for u in upstreams)
    text, n = re.subn(r"(\n\s*least_conn;\n)", r"\1" + lines.replace("\\", "\\\\"), text)
    assert n == 1
    text, n = re.subn(r"listen 8000;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    # Test only: name the replica that served each response.
    text, n = re.subn(
        r"(\n(\s*)proxy_pass http://moe_replicas;\n)",
        r"\1\2add_header X-Upstream $upstream_addr always;\n",
        text,
    )
    assert n == 1
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def start_prometheus(prometheus_bin: str, replicas: list[Replica], workdir: Path) -> Prometheus:
    cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg.pop("rule_files", None)  # alerts are test_prometheus.py's subject
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "moe-prefetch")
    job.pop("dns_sd_configs", None)  # the compose profile's discovery; here the targets are known
    # The labels the Prometheus Operator puts on a ServiceMonitor's targets.
    job["static_configs"] = [
        {"targets": [r.address], "labels": {"namespace": NAMESPACE, "service": "moe-prefetch", "pod": r.name}}
        for r in replicas
    ]
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'prom-data'}",
        ],
        stdout=(workdir / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    return Prometheus(f"http://127.0.0.1:{port}", proc)


@dataclass
class StreamResult:
    upstream: str = ""
    first_chunk_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    chunks: int = 0


def make_client(base: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base}/v1",
        api_key="unused",
        max_retries=0,
        timeout=openai.Timeout(CLIENT_TIMEOUT, connect=5.0),
        http_client=openai.DefaultHttpxClient(
            limits=SDK_HTTP.Limits(max_connections=200, max_keepalive_connections=200)
        ),
    )


def stream_once(client: openai.OpenAI, model: str, max_tokens: int, out: StreamResult) -> None:
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me about the sea."}],
            max_tokens=max_tokens,
            temperature=0.8,
            stream=True,
        )
        out.upstream = served_by(stream.response.headers)
        for chunk in stream:
            if out.first_chunk_at is None:
                out.first_chunk_at = time.monotonic()
            out.chunks += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                out.finish_reason = chunk.choices[0].finish_reason
        if out.finish_reason is None:
            out.error = "stream ended without a finish_reason"
    except openai.APIStatusError as err:  # e.g. 502: the replica died after nginx had passed it the request
        out.upstream = served_by(err.response.headers)
        out.error = f"{type(err).__name__}: {err}"
    except (openai.OpenAIError, httpx.HTTPError, SDK_HTTP.HTTPError) as err:
        out.error = f"{type(err).__name__}: {err}"
    out.finished_at = time.monotonic()


def served_by(headers: httpx.Headers) -> str:
    """The replica that answered: the last of nginx's $upstream_addr ("a, b" when a was tried first)."""
    return headers.get("x-upstream", "").split(",")[-1].strip()


def run_streams(client, model, n, max_tokens) -> tuple[list[StreamResult], ThreadPoolExecutor, list]:
    results = [StreamResult() for _ in range(n)]
    pool = ThreadPoolExecutor(max_workers=n)
    futures = [pool.submit(stream_once, client, model, max_tokens, r) for r in results]
    return results, pool, futures


def wait_all(futures, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for f in futures:
        f.result(timeout=max(0.1, deadline - time.monotonic()))  # raises TimeoutError: a hung stream


@dataclass
class Trickle:
    """One request at a time through nginx until stopped, so rates over the last 30 s are not empty."""

    client: openai.OpenAI
    model: str
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and self.sent < 300 and time.monotonic() < deadline:
            r = StreamResult()
            stream_once(self.client, self.model, 8, r)
            if r.error:
                self.errors.append(r.error)
            self.sent += 1
            self._stop.wait(0.05)
