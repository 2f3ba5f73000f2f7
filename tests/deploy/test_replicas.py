"""Two replicas behind a real nginx, as the multi-gpu compose profile runs them, and a real Prometheus.

Needs Debian's `nginx` and `prometheus` (`.ci/system-deps` installs them; skips without). Two
`moe-prefetch serve` processes (the built-in model on CPU, policy exact, on free ports of 127.0.0.1)
stand for the replicas of one host; `deploy/nginx/nginx.conf` is run by nginx with only its `listen`
port, its upstream `server` lines and its file paths rewritten, plus one response header naming the
upstream that served a request (so the test knows where each stream went). Prometheus scrapes both
replicas with the labels the Prometheus Operator adds on Kubernetes (namespace, service, pod).

1. 64 concurrent streams through nginx all complete, and both replicas served a share of them: each
   replica's `moe_requests_total` equals the streams nginx sent it, and they add up to 64.
2. Every dashboard query (both dashboards, Grafana variables replaced) returns data from both
   replicas: main-dashboard panels each have a series summed over the replicas (no `instance` label),
   and where a panel's sum is additive it equals the sum of its per-replica series at the same instant;
   the KEDA query and the prometheus-adapter rules of deploy/k8s return the queue of both.
3. One replica is killed (SIGKILL) while streams run on both: the streams it served end with an error
   (none hangs: every client has a timeout), the survivor's streams complete, new requests all land on
   the survivor, and its `moe_requests_total` counts exactly what it was sent: nothing else is lost.
Traffic is bounded in count and time; the whole module takes well under two minutes.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.bundles import builtin_bundle
from tests.deploy.conftest import free_port, need_binary
from tests.deploy.replicas_stack import (
    CLIENT_TIMEOUT,
    MAIN_DASHBOARD,
    NAMESPACE,
    NGINX_CONF,
    ROOT,
    STREAMS,
    Replica,
    StreamResult,
    Trickle,
    make_client,
    render_nginx_conf,
    run_streams,
    start_prometheus,
    start_replicas,
    stream_once,
    wait_all,
)
from tests.deploy.test_prometheus import (
    Prometheus,
    _wait_for_scrapes,
    dashboard_exprs,
    substitute,
    variable_queries,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(replicas, nginx base URL, Prometheus): everything running; torn down at the end."""
    nginx_bin, prometheus_bin = need_binary("nginx"), need_binary("prometheus")
    workdir = tmp_path_factory.mktemp("replicas")
    bundle = builtin_bundle(workdir / "bundle")
    replicas = start_replicas(workdir, bundle)
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        conf = render_nginx_conf([r.address for r in replicas], port, workdir)
        check = subprocess.run(
            [nginx_bin, "-t", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(
            [
                nginx_bin,
                "-p",
                str(workdir),
                "-c",
                str(conf),
                "-e",
                str(workdir / "nginx-error.log"),
                "-g",
                f"daemon off; pid {workdir / 'nginx.pid'};",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        procs.append(nginx)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/lb-health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert nginx.poll() is None and time.monotonic() < deadline, (
                workdir / "nginx-error.log"
            ).read_text()
            time.sleep(0.1)
        prom = start_prometheus(prometheus_bin, replicas, workdir)
        procs.append(prom.proc)
        yield replicas, base, prom
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for r in replicas:
            r.stop()


def test_replicas_behind_nginx(stack) -> None:
    replicas, base, prom = stack
    by_addr = {r.address: r for r in replicas}
    client = make_client(base)
    model = client.models.list().data[0].id
    before = {r.name: r.requests_total() for r in replicas}

    # 1. 64 concurrent streams are spread over both replicas, and all complete.
    results, pool, futures = run_streams(client, model, STREAMS, max_tokens=8)
    wait_all(futures, timeout=90)
    pool.shutdown()
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:3]
    sent = Counter(r.upstream for r in results)
    assert set(sent) == set(by_addr), f"nginx sent streams to {dict(sent)}"
    for r in replicas:
        served = r.requests_total() - before[r.name]
        assert served == sent[r.address], f"{r.name}: served {served}, nginx sent {sent[r.address]}"
        assert served >= STREAMS // 8, f"least_conn left {r.name} almost idle: {dict(sent)}"
    assert sum(sent.values()) == STREAMS

    # 2. Prometheus sees both; every dashboard query returns data aggregated across them.
    trickle = Trickle(client, model)
    thread = threading.Thread(target=trickle.run, daemon=True)
    thread.start()
    try:
        _wait_for_scrapes(prom, len(replicas), Path(os.devnull))
        _check_dashboards(prom, replicas)
        _check_autoscaling_queries(prom, replicas)
    finally:
        trickle._stop.set()
        thread.join(timeout=CLIENT_TIMEOUT + 5)
    assert not trickle.errors, trickle.errors[:3]

    # 3. Kill one replica while streams run on both.
    survivor, victim = replicas
    counts = {r.name: r.requests_total() for r in replicas}
    results, pool, futures = run_streams(client, model, 32, max_tokens=400)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = {r.upstream for r in results if r.first_chunk_at and r.finished_at is None}
        if started >= {survivor.address, victim.address}:
            break
        time.sleep(0.02)
    else:
        pytest.fail("streams did not start on both replicas")
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.proc.wait(timeout=10)
    wait_all(futures, timeout=90)
    pool.shutdown()

    on_victim = [r for r in results if r.upstream == victim.address]
    on_survivor = [r for r in results if r.upstream == survivor.address]
    assert len(on_victim) + len(on_survivor) == len(results)
    cut = [r for r in on_victim if r.error]
    assert cut, "no stream was running on the killed replica"
    for r in on_victim:
        assert r.error or r.finished_at < killed_at, (
            "a stream on the killed replica ended cleanly after the kill"
        )
    assert all(r.finished_at - killed_at < CLIENT_TIMEOUT for r in cut), "a cut stream waited for its timeout"
    survivor_errors = [r.error for r in on_survivor if r.error]
    assert not survivor_errors, survivor_errors[:3]

    # New requests go to the survivor (nginx passes a refused connection on); none fails.
    after = [StreamResult() for _ in range(16)]
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(lambda r: stream_once(client, model, 8, r), after))
    assert [r.error for r in after if r.error] == []
    assert {r.upstream for r in after} == {survivor.address}, "new requests went to the dead replica"
    # Every request sent to the survivor is counted there: nothing else was lost.
    assert survivor.requests_total() - counts[survivor.name] == len(on_survivor) + len(after)
    client.close()


def _query(prom: Prometheus, expr: str, at: float) -> list[dict]:
    res = prom.get("/api/v1/query", query=expr, time=f"{at:.3f}")
    assert res.get("status") == "success", f"{res.get('error')}\n{expr}"
    return res["data"]["result"]


def _additive(expr: str) -> bool:
    return expr.startswith("sum") and "/" not in expr and "histogram_quantile" not in expr


def _check_dashboards(prom: Prometheus, replicas: list[Replica]) -> None:
    addresses = {r.address for r in replicas}
    at = time.time()
    panels: dict[str, list[tuple[str, list[dict]]]] = {}
    for where, expr in dashboard_exprs():
        result = _query(prom, substitute(expr), at)
        assert result, f"{where}: no data\n{expr}"
        instances = {s["metric"].get("instance") for s in result}
        assert instances == {None} or instances == addresses, f"{where}: series of {instances}"
        panels.setdefault(where.rsplit(" [", 1)[0], []).append((expr, result))
    for where, query in variable_queries():
        metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query.strip()).group(1)
        assert {s["metric"]["instance"] for s in _query(prom, metric, at)} == addresses, where
    main = {k: v for k, v in panels.items() if k.startswith(MAIN_DASHBOARD)}
    assert len(main) >= 20
    for where, targets in main.items():
        if "per layer" in where or "Active policy" in where or "Pods per policy" in where:
            continue  # one series per layer / per pod / per policy by design (all summed over pods)
        summed = [(e, res) for e, res in targets if all("instance" not in s["metric"] for s in res)]
        assert summed, f"{where}: no series summed over the replicas"
        half = len(targets) // 2
        for (agg_expr, agg), (_, per_pod) in zip(targets[:half], targets[half:], strict=True):
            if not _additive(agg_expr):
                continue
            totals: Counter = Counter()
            for s in per_pod:
                key = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "instance"))
                totals[key] += float(s["value"][1])
            for s in agg:
                key = tuple(sorted(s["metric"].items()))
                assert math.isclose(float(s["value"][1]), totals[key], rel_tol=1e-9, abs_tol=1e-12), (
                    f"{where}: sum {s['value'][1]} != per-replica total {totals[key]}\n{agg_expr}"
                )
    (pods,) = main[f"{MAIN_DASHBOARD}: Pods per policy"]
    assert [(s["metric"]["policy"], s["value"][1]) for s in pods[1]] == [("exact", "2")]


def _check_autoscaling_queries(prom: Prometheus, replicas: list[Replica]) -> None:
    """The queries deploy/k8s scales on, against the Operator's labels: they see both replicas' queues."""
    at = time.time()
    keda = yaml.safe_load((ROOT / "deploy/k8s/components/keda/scaledobject.yaml").read_text())
    query = keda["spec"]["triggers"][0]["metadata"]["query"]
    (total,) = _query(prom, query, at)
    per_pod = _query(prom, "moe_requests_waiting", at)
    assert len(per_pod) == len(replicas)
    assert float(total["value"][1]) == sum(float(s["value"][1]) for s in per_pod)
    adapter = yaml.safe_load((ROOT / "deploy/k8s/monitoring/prometheus-adapter.yaml").read_text())
    config = yaml.safe_load(adapter["data"]["config.yaml"])
    pods = "|".join(r.name for r in replicas)
    for rule, matchers, group in (
        (config["rules"][0], f'namespace="{NAMESPACE}",pod=~"{pods}"', "pod"),
        (config["externalRules"][0], f'namespace="{NAMESPACE}"', "namespace"),
    ):
        series = rule["seriesQuery"].split("{")[0]
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", group)
        )
        result = _query(prom, expr, at)
        assert len(result) == (len(replicas) if group == "pod" else 1), expr


def test_multi_gpu_profile_validates(compose_bin: str, tmp_path: Path) -> None:
    """`docker-compose --profile multi-gpu config` accepts the file; replicas, GPUs, nginx and Prometheus agree."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "COMPOSE_"))}
    r = subprocess.run(
        [
            compose_bin,
            "--env-file",
            str(empty),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "multi-gpu",
        ]
        + ["config"],
        cwd=ROOT,
        env={**env, "GRAFANA_ADMIN_PASSWORD": "test-only"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    replicas = {n: s for n, s in services.items() if n == "server" or n.startswith("server-gpu")}
    gpus = {}
    for name, s in replicas.items():
        (device,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "count" not in device, name
        (gpus[name],) = device["device_ids"]
        assert s["environment"]["MOE_POLICY"], f"{name} reads deploy/moe.env"
        assert s.get("ports", []) == [] or name == "server", f"{name} is reached through the balancer"
    assert len(set(gpus.values())) == len(gpus) >= 2, f"one GPU per replica: {gpus}"
    upstreams = re.findall(r"^\s*server (\S+):8000 ", NGINX_CONF.read_text(), re.M)
    assert sorted(upstreams) == sorted(replicas), "nginx balances over every replica of the profile"
    lb = services["lb"]
    assert any(v.endswith(":/etc/nginx/nginx.conf:ro") for v in lb["volumes"])
    assert lb["profiles"] == ["multi-gpu"] and re.search(r":\d+\.\d+\.\d+$", lb["image"])
    # Prometheus scrapes server by name and the others by their shared alias.
    job = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"][0]
    (alias,) = job["dns_sd_configs"][0]["names"]
    for name, s in replicas.items():
        if name != "server":
            assert alias in s["networks"]["default"]["aliases"], name
