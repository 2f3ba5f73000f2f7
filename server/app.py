"""App factory: `create_app(engine, config)` wires routes, errors, auth and limits around one engine.

Building the app has no side effects; the lifespan starts the engine when the server starts and
shuts it down when the server stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.api.protocol import EngineClient
from server.config import ServerConfig
from server.errors import install_error_handlers
from server.limits import BodySizeLimit
from server.openapi import install_openapi
from server.response_store import ResponseStore
from server.routes import routers


def create_app(engine: EngineClient, config: ServerConfig | None = None) -> FastAPI:
    config = config if config is not None else ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(
        title="moe-prefetch", summary="OpenAI-compatible API for offloaded MoE models", lifespan=lifespan
    )
    app.state.engine = engine
    app.state.config = config
    app.state.responses = ResponseStore(config.response_store)
    install_error_handlers(app)
    install_openapi(app, config)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    return app
