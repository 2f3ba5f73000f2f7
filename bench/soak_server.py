"""One `moe-prefetch serve` child process for the soak: start, wait for /health, sample memory, stop.

The child is `[sys.executable, "-m", "moe_prefetch.cli", "serve", ...]` with PYTHONPATH set to the checkout
this file lives in, so the server imports that checkout whatever is installed. Every `MOE_*` variable of
the caller's environment is dropped first: only the configuration given here reaches the server.
Memory comes from `/proc/<pid>/status` (VmRSS) and `nvidia-smi` (the process's compute memory, or the
device's used memory where the container hides the pid); no psutil, no pynvml. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _smi(*query: str) -> list[list[str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run(
            [exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in res.stdout.splitlines() if line.strip()]


def gpu_mb(pid: int) -> tuple[float | None, str]:
    """(MB, source): the process's compute memory, else the first GPU's memory in use, else (None, 'none')."""
    rows = _smi("--query-compute-apps=pid,used_memory")
    if rows is not None:
        for row in rows:
            if len(row) >= 2 and row[0] == str(pid):
                try:
                    return float(row[1]), "process"
                except ValueError:
                    break
    dev = _smi("--query-gpu=memory.used")
    if dev:
        try:
            return float(dev[0][0]), "device"
        except (ValueError, IndexError):
            pass
    return None, "none"


def gpu_name() -> str | None:
    rows = _smi("--query-gpu=name")
    return rows[0][0] if rows else None


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, wrapper: list[str] | None = None) -> None:
        """wrapper: a command prefix the server runs under (a memory checker), [] for none."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
        path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH", "")) if p)
        self.env = {**clean, **env, "MOE_HOST": "127.0.0.1", "MOE_PORT": str(self.port), "PYTHONPATH": path}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.wrapper = list(wrapper or [])
        self.proc: subprocess.Popen | None = None
        self.started_s: float | None = None

    def start(self, timeout: float) -> None:
        """Start and wait for /health 200; raises RuntimeError with the log tail if it dies or times out."""
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "moe_prefetch.cli", "serve"],
                env=self.env,
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        t0 = time.monotonic()
        with httpx.Client(timeout=5.0) as http:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(f"server exited with {code} during start-up:\n{self.log_tail()}")
                try:
                    if http.get(self.base + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"no /health 200 after {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.25)
        self.started_s = time.monotonic() - t0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory(self) -> dict:
        g, source = gpu_mb(self.pid)
        return {"rss_mb": rss_mb(self.pid), "gpu_mb": g, "gpu_source": source}

    def stop(self, timeout: float = 30.0) -> tuple[int | None, bool]:
        """SIGTERM, then SIGKILL after `timeout` s: (exit code, killed). uvicorn re-raises the SIGTERM it
        handled after its graceful shutdown, so a clean stop exits with -15 (or 0 on older uvicorn)."""
        if self.proc is None:
            return None, False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return self.proc.returncode, True
        return self.proc.returncode, False

    def clean_exit(self, code: int | None, killed: bool) -> bool:
        """Stopped by our SIGTERM through the lifespan's shutdown, not by a crash or SIGKILL."""
        shut = "Application shutdown complete" in self.log_tail(60)
        return not killed and code in (0, -signal.SIGTERM) and shut

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
