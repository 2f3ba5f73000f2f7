"""FastAPI dependencies: the engine and the server config live on `app.state`, set by `create_app`.

Tests swap the engine with `app.dependency_overrides[get_engine]`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.api.protocol import EngineClient
from server.config import ServerConfig


def get_engine(request: Request) -> EngineClient:
    return request.app.state.engine


def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


EngineDep = Annotated[EngineClient, Depends(get_engine)]
ConfigDep = Annotated[ServerConfig, Depends(get_config)]
