"""The OpenAPI document, made to say what the server really answers.

Routes declare their error statuses with `error_responses(...)` and their SSE form with `streamed()`;
`install_openapi` then corrects what FastAPI generates on its own:
- no 422 `HTTPValidationError` (validation errors are 400s in the OpenAI shape, `server/errors.py`);
- error bodies are JSON on every route, also on /metrics, whose 200 is text;
- request schemas exactly as pydantic states them (FastAPI's OpenAPI models hold bounds as floats,
  and 2^64 - 1 becomes 2^64), plus the chat chunk that only the SSE form of a 200 names;
- 401 and a bearer scheme on the /v1 routes when an API key is set;
- the served model's bounds: token ids (prompts, /detokenize) below its vocabulary size, `max_tokens`
  below its context length, `n` at most `max_choices`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from engine.api.errors import EngineError
from server.chat_schemas import ChatCompletionChunk, ChatCompletionRequest
from server.completion_schemas import CompletionRequest
from server.config import ServerConfig
from server.errors import ErrorResponse
from server.responses_schemas import ResponseRequest
from server.tokenize_schemas import DetokenizeRequest, TokenizeRequest

JSON = "application/json"
SSE = "text/event-stream"

ERRORS = {
    400: "Invalid request (`invalid_json`, `invalid_value`, `invalid_request`, `context_length_exceeded`); "
    "`param` names the field",
    401: "`invalid_api_key`: the bearer token is missing or wrong",
    404: "`model_not_found`: not the served model",
    413: "`request_too_large`: the body is over `MOE_MAX_BODY_BYTES`",
    429: "`queue_full`: `MOE_MAX_WAITING` requests already wait; retry later",
    500: "`internal_error` (a bug) or `request_failed` (the engine failed this request only)",
    503: "`engine_dead` (the engine died; the process exits to be restarted) or `generation_aborted`",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries of a route for these error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def streamed(chunk: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry that adds the SSE form of a 200 next to its JSON form.

    Before OpenAPI 3.2's `itemSchema`, the `schema` of `text/event-stream` describes one event: its
    `data` is a chunk or an error in JSON, or the closing `[DONE]`.
    """
    json_data = {"contentMediaType": JSON, "contentSchema": {"anyOf": [_ref(chunk), _ref("ErrorResponse")]}}
    event = {
        "type": "object",
        "description": f"One server-sent event: `data: <{chunk} JSON>`, or an error; `data: [DONE]` last",
        "properties": {"data": {"type": "string", "oneOf": [{"const": "[DONE]"}, json_data]}},
        "required": ["data"],
    }
    return {200: {"content": {SSE: {"schema": event}}}}


def streamed_events(response: str) -> dict[int | str, dict[str, Any]]:
    """The SSE form of a Responses API 200: typed events (`event: <type>`, `data: <JSON>` with the same
    `type` and a `sequence_number`); those that open and close the stream carry the `response` object."""
    event = {
        "type": "object",
        "description": "One server-sent event: `event: response.created | response.in_progress | "
        "response.output_item.added | response.content_part.added | response.output_text.delta | "
        "response.output_text.done | response.content_part.done | response.function_call_arguments.delta | "
        "response.function_call_arguments.done | response.output_item.done | response.completed | "
        f"response.incomplete | error | response.failed`, `data: <JSON>` (the first and last carry a {response})",
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": JSON},
        },
        "required": ["event", "data"],
    }
    return {200: {"content": {SSE: {"schema": event}}}}


def _integers(node: Any) -> Iterator[dict[str, Any]]:
    """Every integer schema inside a JSON schema node (through anyOf and array items)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield node
        for key in ("anyOf", "oneOf", "items"):
            child = node.get(key)
            for item in child if isinstance(child, list) else [child]:
                yield from _integers(item)


def _set_maximum(schemas: dict[str, Any], model: str, field: str, maximum: int) -> None:
    prop = schemas.get(model, {}).get("properties", {}).get(field)
    for node in _integers(prop):
        node["maximum"] = maximum


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            yield path, operation


def _fix_errors(doc: dict[str, Any]) -> None:
    """No 422 (validation errors are 400s); an error body is JSON whatever the route's 200 is."""
    for _, operation in _operations(doc):
        responses = operation.get("responses", {})
        responses.pop("422", None)
        for status, response in responses.items():
            content = response.get("content", {})
            if int(status) >= 400 and JSON not in content and len(content) == 1:
                response["content"] = {JSON: content.popitem()[1]}
    schemas = doc.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def _pydantic_schemas(doc: dict[str, Any]) -> None:
    """The request schemas exactly as pydantic states them, and the chat chunk (only SSE names it)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model, mode in (
        (ChatCompletionRequest, "validation"),
        (CompletionRequest, "validation"),
        (TokenizeRequest, "validation"),
        (DetokenizeRequest, "validation"),
        (ResponseRequest, "validation"),
        (ChatCompletionChunk, "serialization"),
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema


def _require_bearer(doc: dict[str, Any]) -> None:
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operation in _operations(doc):
        if path.startswith("/v1/"):
            operation["security"] = [{"bearer": []}]
            # ErrorResponse is in the components already: every /v1 route declares errors with it.
            operation["responses"]["401"] = {
                "description": ERRORS[401],
                "content": {JSON: {"schema": _ref("ErrorResponse")}},
            }


def _model_bounds(doc: dict[str, Any], app: FastAPI, config: ServerConfig) -> bool:
    """Write the served model's bounds; False while the engine cannot tell them yet (not started)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        _set_maximum(schemas, model, "n", config.max_choices)
    _set_maximum(schemas, "ResponseRequest", "n", 1)  # one output: n > 1 is refused
    try:
        card = app.state.engine.model_card
    except EngineError:
        return False
    for model, field in (
        ("ChatCompletionRequest", "max_tokens"),
        ("ChatCompletionRequest", "max_completion_tokens"),
        ("CompletionRequest", "max_tokens"),
        ("ResponseRequest", "max_tokens"),
        ("ResponseRequest", "max_output_tokens"),
    ):
        _set_maximum(schemas, model, field, card.context_length - 1)
    if card.vocab_size is not None:
        _set_maximum(schemas, "CompletionRequest", "prompt", card.vocab_size - 1)
        _set_maximum(schemas, "DetokenizeRequest", "tokens", card.vocab_size - 1)
    return True


def install_openapi(app: FastAPI, config: ServerConfig) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        _fix_errors(doc)
        _pydantic_schemas(doc)
        if config.api_key is not None:
            _require_bearer(doc)
        if _model_bounds(doc, app, config):
            app.openapi_schema = doc  # complete: the model card does not change
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
