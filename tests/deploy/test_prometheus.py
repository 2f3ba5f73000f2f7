"""A real Prometheus scrapes moe-prefetch and evaluates every PromQL expression the project ships.

Needs Debian's `prometheus` package (`.ci/system-deps` installs it); skips when it is missing. The
project's `deploy/prometheus/prometheus.yml` is rendered with the test targets (`metrics_target`, see
conftest.py), a 1 s scrape interval and the absolute path of `alerts.yml`; `promtool check config`
and `check rules` must pass, and `promtool test rules` runs the alert unit tests in alerts.test.yml.
Then Prometheus runs on 127.0.0.1 and, after a few scrapes, every expression is evaluated through
`/api/v1/query`:

- dashboard panel targets, with Grafana's variables replaced (`$__rate_interval` -> 30s, `$__range`
  -> 5m, `$instance` / `$policy` -> `.*`): status success and a non-empty result;
- template variables (`label_values(metric, label)`): `metric` returns series carrying `label`;
- alert rules: the whole expression must parse (status success; it may be empty, the alert is not
  firing), and each operand of its top-level comparisons and `and`/`or`/`unless` that is not a number
  must return data, which proves every metric and ratio the condition compares exists after traffic.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
GRAFANA_VARS = {
    "$__rate_interval": "30s",
    "$__interval": "15s",
    "$__range": "5m",
    "$instance": ".*",
    "$policy": ".*",
}
SCRAPES_NEEDED = 6  # samples per target before querying: enough for rate() over the 30 s window


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):  # $__rate_interval before $__range
        expr = expr.replace(var, GRAFANA_VARS[var])
    assert not re.search(r"\$[A-Za-z_{]", expr), f"unsubstituted Grafana variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target of every dashboard, rows' nested panels included."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        panels = list(dash["panels"])
        for p in dash["panels"]:
            panels.extend(p.get("panels", []))
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"{path.name}: {p['title']} [{t['refId']}]", t["expr"]))
    return out


def variable_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                out.append((f"{path.name}: ${v['name']}", q))
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


_BINARY_OP = re.compile(
    r"\s*(?:\band\b|\bor\b|\bunless\b|==|!=|<=|>=|<|>)"
    r"(?:\s*\bbool\b)?"
    r"(?:\s*\b(?:on|ignoring)\s*\([^)]*\))?"
    r"(?:\s*\b(?:group_left|group_right)\b(?:\s*\([^)]*\))?)?\s*"
)


def top_level_operands(expr: str) -> list[str]:
    """Splits `expr` at comparison and set operators outside any (), {} or [] and outside strings."""
    parts, start, depth, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (m := _BINARY_OP.match(expr, i)) and m.group().strip():
            op = m.group().strip()
            # A word operator must start at a word boundary ("or" inside "vector" is no operator).
            if op[0].isalpha() and i > 0 and (expr[i - 1].isalnum() or expr[i - 1] == "_"):
                i += 1
                continue
            parts.append(expr[start:i])
            start = i = m.end()
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def test_operand_splitter() -> None:
    expr = '(a{x="<"} / b) < 0.8\nand on (job) sum by (job) (rate(c[5m])) > 0 unless vector(1)'
    assert top_level_operands(expr) == [
        '(a{x="<"} / b)',
        "0.8",
        "sum by (job) (rate(c[5m]))",
        "0",
        "vector(1)",
    ]
    assert top_level_operands('up{job="x"} == 0') == ['up{job="x"}', "0"]


def test_every_query_is_exercised() -> None:
    # Guards the evaluation test below against silently checking nothing.
    assert len(DASHBOARDS) >= 2
    assert len(dashboard_exprs()) >= 40
    assert len(variable_queries()) >= 3
    assert {r["alert"] for r in alert_rules()} >= {
        "MoeServerDown",
        "MoePrefetchHitRateLow",
        "MoeStallPerTokenHigh",
    }


def test_promtool_checks_shipped_files(promtool: str) -> None:
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        r = subprocess.run([promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_unit_tests(promtool: str) -> None:
    """Synthetic series: the alerts fire when they should, and idle or policy=none servers stay quiet."""
    tests = Path(__file__).with_name("alerts.test.yml")
    r = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_exposition_passes_promtool_lint(metrics_target, promtool: str) -> None:
    """What Prometheus scrapes follows its naming and type conventions (`promtool check metrics`)."""
    for t in metrics_target:
        with urllib.request.urlopen(f"http://{t.address}/metrics", timeout=10) as resp:
            body = resp.read()
        assert b"moe_expert_hits_total" in body and b"moe_policy_info" in body
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen) -> None:
        self.url = url
        self.proc = proc

    def get(self, path: str, **params: str) -> dict:
        q = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400 on a parse error: the body says why
            return json.loads(err.read())

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)


def render_config(targets: list[str], workdir: Path) -> Path:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == ["server:8000"], (
        "shipped config must target compose's server"
    )
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "moe-prefetch")
    job["static_configs"] = [{"targets": targets}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def prometheus(metrics_target, prometheus_bin: str, promtool: str, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    config = render_config([t.address for t in metrics_target], workdir)
    check = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'data'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc)
    try:
        _wait_for_scrapes(prom, len(metrics_target), workdir / "prometheus.log")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _wait_for_scrapes(prom: Prometheus, n_targets: int, log: Path, timeout: float = 25.0) -> None:
    """Until every target is up and has SCRAPES_NEEDED samples; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = "Prometheus did not answer"
    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {prom.proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            res = prom.query('count_over_time(up{job="moe-prefetch"}[1m]) and on (instance) up == 1')
        except OSError as err:
            last = str(err)
        else:
            series = res.get("data", {}).get("result", [])
            counts = [int(float(s["value"][1])) for s in series]
            last = f"samples per up target: {counts}"
            if len(counts) == n_targets and min(counts) >= SCRAPES_NEEDED:
                return
        time.sleep(0.5)
    pytest.fail(f"targets not scraped {SCRAPES_NEEDED} times within {timeout:.0f} s ({last})")


def _assert_data(prom: Prometheus, where: str, expr: str) -> list[dict]:
    res = prom.query(expr)
    assert res.get("status") == "success", f"{where}: {res.get('error')}\n{expr}"
    result = res["data"]["result"]
    assert result, f"{where}: no data after traffic\n{expr}"
    return result


@pytest.mark.slow
def test_dashboard_queries_return_data(prometheus: Prometheus) -> None:
    for where, expr in dashboard_exprs():
        _assert_data(prometheus, where, substitute(expr))


@pytest.mark.slow
def test_template_variables_return_values(prometheus: Prometheus) -> None:
    for where, query in variable_queries():
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip())
        assert m, f"{where}: expected label_values(metric, label), got {query!r}"
        metric, label = m.groups()
        result = _assert_data(prometheus, where, metric)
        assert all(s["metric"].get(label) for s in result), f"{where}: series without label {label}"


@pytest.mark.slow
def test_alert_expressions_parse_and_their_operands_return_data(prometheus: Prometheus) -> None:
    for rule in alert_rules():
        expr = rule["expr"]
        res = prometheus.query(expr)
        assert res.get("status") == "success", f"{rule['alert']}: {res.get('error')}"
        operands = [o for o in top_level_operands(expr) if not re.fullmatch(r"[-+]?[0-9.eE+-]+", o)]
        assert operands, rule["alert"]
        for op in operands:
            _assert_data(prometheus, f"alert {rule['alert']}", op)


@pytest.mark.slow
def test_comparison_view_tells_policies_apart(prometheus: Prometheus, metrics_target) -> None:
    """The by-policy join of the comparison dashboard yields one series per deployment, labelled by policy."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/policy-comparison.json").read_text())
    panel = next(p for p in dash["panels"] if p["title"] == "Prefetch hit rate by policy")
    result = _assert_data(prometheus, panel["title"], substitute(panel["targets"][0]["expr"]))
    assert {s["metric"]["policy"] for s in result} == {t.policy for t in metrics_target}
    assert {s["metric"]["instance"] for s in result} == {t.address for t in metrics_target}
    for s in result:
        assert 0.0 < float(s["value"][1]) <= 1.0


@pytest.mark.slow
def test_no_alert_fires_on_healthy_traffic(prometheus: Prometheus) -> None:
    """The real servers are healthy with a high hit rate: no alert may be pending or firing."""
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    assert alerts == [], alerts
    rules = prometheus.get("/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"]}
    assert loaded == {r["alert"] for r in alert_rules()}
