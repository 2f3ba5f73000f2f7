"""FastAPI dependencies: the engine, the server config and the response store live on `app.state`, set by
`create_app`.

Tests swap the engine with `app.dependency_overrides[get_engine]`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.api.protocol import EngineClient
from server.config import ServerConfig
from server.response_store import ResponseStore


def get_engine(request: Request) -> EngineClient:
    return request.app.state.engine


def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


def get_responses(request: Request) -> ResponseStore:
    return request.app.state.responses


EngineDep = Annotated[EngineClient, Depends(get_engine)]
StoreDep = Annotated[ResponseStore, Depends(get_responses)]
ConfigDep = Annotated[ServerConfig, Depends(get_config)]
