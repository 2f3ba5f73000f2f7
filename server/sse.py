"""Server-sent events in the OpenAI formats: `data: <json>\n\n` per chunk and `data: [DONE]\n\n` last (chat,
completions), or `event: <type>\ndata: <json>\n\n` per event (responses, `named`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json()
    else:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def named(kind: str, payload: dict[str, Any]) -> bytes:
    """One event of the Responses API: its type as the SSE event name and in the data."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()
