"""The app's routes: chat, completions and responses (own modules), models, health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from server import chat, completions, responses, tokenize
from server.auth import require_api_key
from server.deps import EngineDep
from server.errors import APIError
from server.openapi import error_responses
from server.schemas import Health, ModelList, ModelObject

v1 = APIRouter(dependencies=[Depends(require_api_key)])
ops = APIRouter()


def _model(engine: EngineDep) -> ModelObject:
    card = engine.model_card
    return ModelObject(
        id=card.id, created=card.created, owned_by=card.owned_by, max_model_len=card.context_length
    )


@v1.get("/v1/models", response_model=ModelList, responses=error_responses(500))
async def list_models(engine: EngineDep) -> ModelList:
    return ModelList(data=[_model(engine)])


@v1.get("/v1/models/{model_id:path}", response_model=ModelObject, responses=error_responses(404, 500))
async def get_model(model_id: str, engine: EngineDep) -> ModelObject:
    model = _model(engine)
    if model_id != model.id:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return model


@ops.get(
    "/health",
    response_model=Health,
    responses={
        503: {"model": Health, "description": "The engine is not running (e.g. it died)"},
        **error_responses(500),
    },
)
async def health(engine: EngineDep) -> JSONResponse:
    h = engine.health()
    body = {
        "status": "ok" if h.ok else "unhealthy",
        "detail": h.detail,
        "running": h.running,
        "waiting": h.waiting,
        **h.extra,
    }
    return JSONResponse(body, status_code=200 if h.ok else 503)


@ops.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition"}, **error_responses(500)},
)
def metrics(engine: EngineDep) -> Response:
    # A plain def: FastAPI runs it in a worker thread, so a slow scrape never blocks the loop.
    payload, content_type = engine.metrics_exposition()
    return Response(payload, media_type=content_type)


routers = (chat.router, completions.router, responses.router, tokenize.router, v1, ops)
