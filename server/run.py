"""Serve an app with uvicorn (used by `moe-prefetch serve`). Ctrl-C / SIGTERM shut down gracefully:
new connections are refused, running responses get `graceful_timeout` seconds, then the lifespan
shuts the engine down."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


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


def run_server(
    app: FastAPI, host: str, port: int, log_level: str = "info", graceful_timeout: float = 10.0
) -> None:
    """Block until the server stops."""
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level, graceful_timeout))
    logger.info("serving on http://%s:%d", host, port)
    server.run()
