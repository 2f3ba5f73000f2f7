"""Frozen HTTP-layer configuration, built once at start-up from `moe_prefetch.settings.Settings`.

The served model name is not here: it comes from `engine.model_card`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moe_prefetch.settings import Settings


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None  # if set, /v1 routes need "Authorization: Bearer <key>"
    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies are answered 413
    max_choices: int = 16  # most engine generations one request may start (n x number of prompts)
    response_store: int = 1024  # responses kept for previous_response_id (server.response_store); 0: none

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerConfig:
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        return cls(
            api_key=key or None,
            max_body_bytes=settings.max_body_bytes,
            response_store=settings.response_store,
        )
