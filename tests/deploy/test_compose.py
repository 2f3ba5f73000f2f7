"""Checks of the container side: docker-compose.yml, the Dockerfile, deploy/moe.env, the health probe.

No Docker engine runs on CI machines, so nothing here builds or starts a container. Instead:
Debian's `docker-compose config` validates and interpolates the compose file (skips when the binary is
missing); pyyaml checks its structure; the Dockerfile is parsed into instructions and linted for what
the issue asks (multi-stage, non-root, HEALTHCHECK on /health, EXPOSE, no build tools or secrets in
the final stage); the env file may only set known MOE_* variables; the pinned constraints cover every
dependency; and the health probe the image runs is exercised against a stdlib server on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from engine.api.policies import POLICIES
from moe_prefetch.settings import describe_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BUILD_TOOLS = ("gcc", "g++", "cc", "make", "build-essential", "clang", "cmake", "python3-dev", "git")


# --- docker-compose.yml -------------------------------------------------------------------------


def _compose_config(compose_bin: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "COMPOSE_"))}
    return subprocess.run(
        # An empty --env-file: a developer's ./.env must not change what is validated.
        [compose_bin, "--env-file", str(empty), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_config_validates(compose_bin: str, tmp_path: Path) -> None:
    r = _compose_config(compose_bin, {"GRAFANA_ADMIN_PASSWORD": "test-only"}, tmp_path)
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    default = {name for name, s in resolved["services"].items() if not s.get("profiles")}
    assert default == {"server", "prometheus", "grafana"}  # the multi-gpu profile adds the rest
    env = resolved["services"]["server"]["environment"]
    assert env["MOE_POLICY"] in POLICIES  # the env file was read
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "test-only"


def test_compose_requires_grafana_admin_password(compose_bin: str, tmp_path: Path) -> None:
    r = _compose_config(compose_bin, {}, tmp_path)
    assert r.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_server_reserves_a_gpu(compose: dict) -> None:
    devices = compose["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_server_is_configured_by_the_env_file(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["env_file"] == ["deploy/moe.env"]
    assert "environment" not in server, "server settings belong in deploy/moe.env"
    assert server["build"]["context"] == "."
    assert server["healthcheck"]["test"][-1] == "/opt/moe/healthcheck.py"
    assert server["ulimits"]["memlock"] == -1


def test_volumes_mount_models_and_provisioning(compose: dict) -> None:
    services = compose["services"]
    targets = {v.removesuffix(":ro").rsplit(":", 1)[1] for v in services["server"]["volumes"]}
    assert targets == {"/models", "/predictors"}
    assert all(v.endswith(":ro") for v in services["server"]["volumes"])
    prom = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    graf = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in graf
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in graf
    named = {v.split(":")[0] for s in services.values() for v in s["volumes"] if not v.startswith(("$", "."))}
    assert named <= set(compose["volumes"])


def test_grafana_anonymous_read_only_and_images_pinned(compose: dict) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"].endswith(":-true}")
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for name in ("prometheus", "grafana"):
        image = compose["services"][name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name} image must be pinned to a version: {image}"


def test_published_ports_default_to_loopback(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDR:-127.0.0.1}:"), f"{name} publishes {port} on every interface"


def test_prometheus_datasource_and_dashboard_provider_match_compose() -> None:
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    assert ds["jsonData"]["timeInterval"] == scrape
    provider = yaml.safe_load((prov / "dashboards" / "moe-prefetch.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- deploy/moe.env and pinned dependencies -----------------------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            out[key] = value
    return out


def test_env_file_sets_only_known_settings() -> None:
    env = _env_file(ROOT / "deploy" / "moe.env")
    known = {name for name, _, _ in describe_variables()}
    assert set(env) <= known, f"unknown variables: {set(env) - known}"
    assert env["MOE_POLICY"] in POLICIES
    assert "MOE_EXPERT_CACHE_FRACTION" in env or "MOE_EXPERT_CACHE_GB" in env
    assert "MOE_API_KEY" not in env, "no secret in the shipped env file"
    # The commented examples must name real variables too.
    commented = re.findall(r"^# (MOE_[A-Z_]+)=", (ROOT / "deploy" / "moe.env").read_text(), re.M)
    assert commented and set(commented) <= known


def test_constraints_pin_every_dependency() -> None:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[re.sub(r"[-_.]+", "-", req.name).lower()] = spec.version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = re.sub(r"[-_.]+", "-", dep.name).lower()
        if name == "torch":
            continue  # pinned by the Dockerfile's TORCH_VERSION
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {dep}"


# --- Dockerfile ---------------------------------------------------------------------------------


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        stages[-1].append((instr, args.strip()))
    return stages  # stages[0] holds the global ARGs before the first FROM


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def _args(stage: list[tuple[str, str]], instr: str) -> list[str]:
    return [a for i, a in stage if i == instr]


def test_dockerfile_is_multi_stage_and_copies_only_the_venv(dockerfile) -> None:
    stages = dockerfile[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert any("--from=builder /opt/venv /opt/venv" in a for a in _args(final, "COPY"))
    assert not any(a.startswith(". ") for a in _args(final, "COPY")), "final stage copies the build context"
    builder = stages[0]
    assert any("constraints.txt" in a for a in _args(builder, "RUN"))


def test_dockerfile_final_stage_runs_as_non_root(dockerfile) -> None:
    final = dockerfile[-1]
    users = _args(final, "USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    # USER must come after the last RUN that needs root, and before the entrypoint.
    order = [i for i, _ in final]
    assert order.index("USER") > max(n for n, i in enumerate(order) if i == "RUN")


def test_dockerfile_healthcheck_probes_health(dockerfile) -> None:
    final = dockerfile[-1]
    (hc,) = _args(final, "HEALTHCHECK")
    assert "CMD" in hc and "/opt/moe/healthcheck.py" in hc
    assert "/health" in (ROOT / "deploy" / "healthcheck.py").read_text()
    copies = " ".join(_args(final, "COPY"))
    assert "deploy/healthcheck.py /opt/moe/healthcheck.py" in copies


def test_dockerfile_expose_env_volumes_entrypoint(dockerfile) -> None:
    final = dockerfile[-1]
    assert _args(final, "EXPOSE") == ["8000"]
    env = " ".join(_args(final, "ENV"))
    assert "MOE_HOST=0.0.0.0" in env and "MOE_PORT=8000" in env
    assert set(re.findall(r"MOE_[A-Z_]+", env)) <= {"MOE_HOST", "MOE_PORT"}, (
        "other settings go in the env file"
    )
    assert _args(final, "VOLUME") == ['["/models", "/predictors"]']
    assert _args(final, "ENTRYPOINT") == ['["moe-prefetch", "serve"]']


def test_dockerfile_final_stage_has_no_build_tools_or_secrets(dockerfile) -> None:
    final = dockerfile[-1]
    for run in _args(final, "RUN"):
        words = set(shlex.split(run.replace("&&", " ")))
        assert not words & set(BUILD_TOOLS), f"build tools installed in the final stage: {run}"
        assert "apt-get" not in words or "install" not in words, f"final stage installs packages: {run}"
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?i)(password|secret|token|api_key)\s*=", text), "credentials in the Dockerfile"
    assert not re.search(r"(?i)^\s*(ARG|ENV)\s+\S*(KEY|TOKEN|SECRET|PASSWORD)", text, re.M)


def test_base_image_is_python_slim_matching_ci(dockerfile) -> None:
    (arg,) = [a for i, a in dockerfile[0] if i == "ARG"]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", image)
    assert all(a.startswith("${PYTHON_IMAGE}") for s in dockerfile[1:] for a in _args(s, "FROM"))


def test_dockerignore_keeps_models_and_env_out_of_the_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "models", "predictor-bundles", "*.env", "tests"} <= ignored
    assert not ignored & {
        "deploy",
        "engine",
        "server",
        "moe_prefetch",
        "predictors",
        "pyproject.toml",
        "README.md",
    }


def test_parser_sees_continuations_and_stages() -> None:
    stages = parse_dockerfile("ARG A=1\nFROM x AS b\nRUN a \\\n  && gcc\nFROM y\nUSER 1\n")
    assert stages == [
        [("ARG", "A=1")],
        [("FROM", "x AS b"), ("RUN", "a    && gcc")],
        [("FROM", "y"), ("USER", "1")],
    ]


# --- deploy/healthcheck.py -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_healthcheck_script_follows_health_status(status: int, code: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status if self.path == "/health" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        r = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
            env={**os.environ, "MOE_PORT": str(port)},
            capture_output=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == code, r.stderr


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # bound then closed: nothing listens there afterwards
    r = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
        env={**os.environ, "MOE_PORT": str(port)},
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 1
