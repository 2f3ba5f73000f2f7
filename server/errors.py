"""OpenAI-shaped errors: one body model and the exception handlers that produce it.

Every error answer is `{"error": {"message", "type", "param", "code"}}`. Validation errors and bad
JSON are 400 with the offending field in `param`; engine errors carry their own status; HTTP errors
(404 route, 405 method) keep theirs; anything unexpected is a 500 with a generic message and a log
line, never a traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.api.errors import EngineError

logger = logging.getLogger(__name__)


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class APIError(Exception):
    """An error the HTTP layer itself raises (auth, unknown model, unsupported option)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code)).model_dump()


def error_response(
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def engine_error_body(err: EngineError) -> dict[str, Any]:
    return error_body(err.message, err.type, err.param, err.code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: Sequence[Any]) -> str | None:
    """("body", "messages", 0, "role") -> "messages[0].role", ("query", "limit") -> "limit"; tagged-union
    and type tags dropped."""
    if loc and loc[0] in ("query", "path"):
        loc = loc[1:]
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and ("[" in p or "-" in p or p in _TYPE_TAGS):
            continue  # a union member's tag, not a field name
        else:
            out += f".{p}" if out else str(p)
    return out or None


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "missing":
        return f"Missing required parameter: '{param}'." if param else "Missing request body."
    return f"Invalid value for '{param}': {msg}" if param else f"Invalid request body: {msg}"


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(
            400,
            "We could not parse the JSON body of your request: it is not valid JSON.",
            "invalid_request_error",
            None,
            "invalid_json",
        )
    param = _param(first.get("loc", ()))
    message = _validation_message(first, param)
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error(s))"
    return error_response(400, message, "invalid_request_error", param, "invalid_value")


async def _api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(ErrorResponse(error=exc.info).model_dump(), status_code=exc.status, headers=headers)


async def _engine_error_handler(request: Request, exc: EngineError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("engine error on %s: %s", request.url.path, exc.message)
    return JSONResponse(engine_error_body(exc), status_code=exc.status)


# FastAPI raises a 400 HTTPException only when the body cannot be decoded (e.g. an integer of over
# 4300 digits, which json.loads refuses); other bad JSON is a RequestValidationError.
_HTTP_CODES = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(
        exc.status_code,
        message,
        kind,
        None,
        _HTTP_CODES.get(exc.status_code),
        headers=getattr(exc, "headers", None),
    )


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        500,
        "The server had an internal error while processing your request.",
        "server_error",
        None,
        "internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(EngineError, _engine_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
