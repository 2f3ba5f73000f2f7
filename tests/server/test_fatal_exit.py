"""A real `moe-prefetch serve` process (built-in model, CPU) whose decode steps fail on purpose.

First a non-fatal failure: the two requests of that batch get a `request_failed` error, /health stays 200
and the server keeps serving. Then a fatal one (what a poisoned CUDA device raises): the two requests in
flight get `engine_dead` errors instead of hanging, the cause is logged once, and the process exits with
status 3 (`server.run.EXIT_ENGINE_FATAL`) on its own, for a supervisor to restart it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from server.run import EXIT_ENGINE_FATAL

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("fatal_launcher.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_error(url: str, prompt: str) -> tuple[int, dict | None]:
    """(status, the error object the response carried, in its body or as an SSE event; None if none)."""
    body = {"prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(r.read())["error"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    return 200, event["error"]
    return 200, None


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def test_a_fatal_engine_fault_answers_in_flight_requests_and_exits_nonzero(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOE_TEST_FAULTS": "value,cuda"}
    args = ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err_file:  # a file, not a pipe nobody reads while the server runs
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        wait_healthy(url, proc, log)
        with ThreadPoolExecutor(2) as pool:
            prompts = ["Once upon a time", "The river ran"]
            failed = list(pool.map(lambda p: stream_error(url, p), prompts))
            assert [err and err["code"] for _, err in failed] == ["request_failed"] * 2, failed
            assert all("injected decode failure" in err["message"] for _, err in failed)
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 200, health.text

            t0 = time.monotonic()
            dead = list(pool.map(lambda p: stream_error(url, p), prompts))
        for status, err in dead:
            assert status in (200, 503) and err is not None and err["code"] == "engine_dead", dead
            assert "illegal memory access" in err["message"]
        returncode = proc.wait(timeout=30)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    stderr = log.read_text()
    assert returncode == EXIT_ENGINE_FATAL == 3, stderr
    assert stderr.count("fatal engine error, the engine stops serving") == 1, stderr
    assert "Traceback" in stderr and "illegal memory access" in stderr
