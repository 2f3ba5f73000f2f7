"""Fixtures: a FakeEngine behind the real app, served by real uvicorn on 127.0.0.1, and clients; the real
engine with `real_reference.CONFIG` (`real`; modules that need another configuration define their own) and
the runner-driven reference it is compared with (`ref`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeEngine
from tests.server_harness import Live, live_server


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(FakeEngine(token_delay=0.001)) as server:
        yield server


@pytest.fixture(scope="module")
def real() -> Iterator[Live]:
    from engine.frontend.async_engine import AsyncEngine
    from tests.server.real_reference import CONFIG

    with live_server(AsyncEngine.from_config(CONFIG), timeout=120.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def ref():
    from tests.server.real_reference import Reference

    return Reference()
