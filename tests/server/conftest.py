"""Fixtures: a FakeEngine behind the real app, served by real uvicorn on 127.0.0.1, and clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine
from tests.server_harness import ServerHandle, serve


@dataclass
class Live:
    handle: ServerHandle
    engine: FakeEngine
    http: httpx.Client
    client: openai.OpenAI

    @property
    def url(self) -> str:
        return self.handle.base_url


@contextmanager
def live_server(engine: FakeEngine, config: ServerConfig | None = None, api_key: str = "unused") -> Iterator[Live]:
    with serve(create_app(engine, config)) as handle:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=handle.base_url, timeout=10.0, headers=headers) as http:
            client = openai.OpenAI(base_url=handle.base_url + "/v1", api_key=api_key, max_retries=0, timeout=10.0)
            try:
                yield Live(handle, engine, http, client)
            finally:
                client.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(FakeEngine(token_delay=0.001)) as server:
        yield server
