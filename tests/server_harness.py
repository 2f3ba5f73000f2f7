"""Start a real uvicorn server for an app on 127.0.0.1 (a free port) in a background thread.

The socket is bound before the server starts, so the port is known and never raced for. `stop()`
asks uvicorn to exit (graceful, then forced) and joins the thread; both waits are bounded.
`live_server(engine)` serves `create_app(engine)` and hands out an httpx client and an openai
client pointed at it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import uvicorn
from fastapi import FastAPI

from engine.api.protocol import EngineClient
from server.app import create_app
from server.config import ServerConfig


class ServerHandle:
    def __init__(self, app: FastAPI, log_level: str = "warning") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout / 2)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout / 2)
        self.sock.close()


@contextmanager
def serve(app: FastAPI) -> Iterator[ServerHandle]:
    handle = ServerHandle(app)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class Live:
    handle: ServerHandle
    engine: EngineClient
    http: httpx.Client
    client: openai.OpenAI

    @property
    def url(self) -> str:
        return self.handle.base_url


@contextmanager
def live_server(
    engine: EngineClient, config: ServerConfig | None = None, api_key: str = "unused", timeout: float = 10.0
) -> Iterator[Live]:
    with serve(create_app(engine, config)) as handle:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=handle.base_url, timeout=timeout, headers=headers) as http:
            client = openai.OpenAI(
                base_url=handle.base_url + "/v1", api_key=api_key, max_retries=0, timeout=timeout
            )
            try:
                yield Live(handle, engine, http, client)
            finally:
                client.close()


def wait_until(cond, timeout: float = 30.0, poll: float = 0.01) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()
