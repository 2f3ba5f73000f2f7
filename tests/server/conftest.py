"""Fixtures: a FakeEngine behind the real app, served by real uvicorn on 127.0.0.1, and clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeEngine
from tests.server_harness import Live, live_server


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(FakeEngine(token_delay=0.001)) as server:
        yield server
