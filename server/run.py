"""Serve an app with uvicorn (used by `moe-prefetch serve`). Ctrl-C / SIGTERM shut down gracefully:
new connections are refused, running responses get `graceful_timeout` seconds, then the lifespan
shuts the engine down.

Given the engine, a watchdog thread polls `engine.health()` every `POLL_SECONDS`. When the engine reports
a fatal fault (a poisoned device: it will never serve again), the watchdog waits `FATAL_GRACE_SECONDS` so
in-flight responses flush their 503 / SSE error, then asks uvicorn to exit; `run_server` returns
`EXIT_ENGINE_FATAL` and the process exits with it, for a supervisor (docker's restart policy, Kubernetes)
to start a fresh one instead of a process answering 503 forever. Should shutdown hang on the broken
device, the process is ended `HARD_EXIT_SECONDS` after the fault. "Still loading" is never fatal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import uvicorn
from fastapi import FastAPI

from engine.api.protocol import EngineClient

logger = logging.getLogger(__name__)

EXIT_ENGINE_FATAL = 3  # the process's exit status after a fatal engine fault
POLL_SECONDS = 0.25
FATAL_GRACE_SECONDS = 1.5
HARD_EXIT_SECONDS = 30.0


def uvicorn_config(
    app: FastAPI, host: str, port: int, log_level: str = "info", graceful_timeout: float = 10.0
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,
        proxy_headers=False,
        server_header=False,
    )


class FatalWatch:
    """A daemon thread that stops `server` once `engine.health().fatal`; `fired` says whether it did."""

    def __init__(self, server: uvicorn.Server, engine: EngineClient, grace: float = FATAL_GRACE_SECONDS):
        self.server, self.engine, self.grace = server, engine, grace
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moe-fatal-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            try:
                health = self.engine.health()
            except Exception:  # a health check that fails is not a verdict; the next poll asks again
                continue
            if health.fatal:
                break
        else:
            return
        self.fired = True
        logger.critical(
            "the engine had a fatal error (%s); exiting with status %d in %.1f s so a supervisor restarts "
            "the server",
            health.detail,
            EXIT_ENGINE_FATAL,
            self.grace,
        )
        if self._done.wait(self.grace):
            return
        self.server.should_exit = True
        if not self._done.wait(HARD_EXIT_SECONDS - self.grace):
            logger.critical("shutdown did not finish; ending the process now")
            sys.stderr.flush()
            os._exit(EXIT_ENGINE_FATAL)


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str = "info",
    graceful_timeout: float = 10.0,
    engine: EngineClient | None = None,
) -> int:
    """Block until the server stops; 0, or `EXIT_ENGINE_FATAL` when it stopped for `engine`'s fatal fault."""
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level, graceful_timeout))
    watch = FatalWatch(server, engine) if engine is not None else None
    if watch is not None:
        watch.start()
    logger.info("serving on http://%s:%d", host, port)
    started = time.monotonic()
    try:
        server.run()
    finally:
        if watch is not None:
            watch.stop()
    if watch is not None and watch.fired:
        logger.critical("stopped after a fatal engine error, %.0f s after start", time.monotonic() - started)
        return EXIT_ENGINE_FATAL
    return 0
