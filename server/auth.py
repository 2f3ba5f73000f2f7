"""Optional Bearer API key for the /v1 routes (`MOE_API_KEY`). /health and /metrics stay open."""

from __future__ import annotations

import hmac

from fastapi import Request

from server.errors import APIError


def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the configured key is given as `Authorization: Bearer <key>`."""
    key: str | None = request.app.state.config.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
            param=None,
            code="invalid_api_key",
        )
