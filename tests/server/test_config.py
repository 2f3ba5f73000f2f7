"""ServerConfig is derived from the one settings class."""

from __future__ import annotations

import dataclasses

import pytest

from moe_prefetch.settings import load_settings
from server.config import ServerConfig


def test_from_settings(monkeypatch):
    monkeypatch.delenv("MOE_API_KEY", raising=False)
    monkeypatch.delenv("MOE_MAX_BODY_BYTES", raising=False)
    assert ServerConfig.from_settings(load_settings()) == ServerConfig(
        api_key=None, max_body_bytes=4 * 1024 * 1024
    )
    monkeypatch.setenv("MOE_API_KEY", "s3cret")
    monkeypatch.setenv("MOE_MAX_BODY_BYTES", "2048")
    cfg = ServerConfig.from_settings(load_settings())
    assert cfg.api_key == "s3cret" and cfg.max_body_bytes == 2048
    monkeypatch.setenv("MOE_API_KEY", "")
    assert ServerConfig.from_settings(load_settings()).api_key is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.api_key = "x"  # type: ignore[misc]
