"""`run_server` serves until SIGINT/SIGTERM, then shuts down gracefully through the lifespan."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, sys
from server.app import create_app
from server.run import run_server
from tests.fakes import FakeEngine

class Engine(FakeEngine):
    async def shutdown(self):
        await super().shutdown()
        print("engine shut down", flush=True)

run_server(create_app(Engine()), "127.0.0.1", int(sys.argv[1]), log_level="warning", graceful_timeout=2)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_server_serves_and_shuts_down_on_sigterm():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        proc.stderr.read() if proc.stderr else "server did not start"
                    ) from None
                time.sleep(0.05)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    # uvicorn re-raises the captured signal after a clean shutdown, so the exit status is the signal.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "engine shut down" in out
