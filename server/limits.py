"""Request body size limit (`MOE_MAX_BODY_BYTES`) as a pure ASGI middleware: 413 before the app runs.

The body is read up front, bounded: a `Content-Length` over the limit is refused without reading,
a chunked body is refused as soon as the running total passes it. The app then receives the body
from memory, and later `receive()` calls (disconnect detection) go to the server as usual.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body

DRAIN_FACTOR = 4


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                f"Request body too large: the limit is {self.max_body_bytes} bytes.",
                "invalid_request_error",
                None,
                "request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _drain(self, receive: Receive, seen: int, more: bool) -> None:
        budget = DRAIN_FACTOR * self.max_body_bytes
        while more and seen <= budget:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    if declared <= DRAIN_FACTOR * self.max_body_bytes:
                        await self._drain(receive, 0, True)
                    await self._reject(send)
                    return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                await self._drain(receive, total, message.get("more_body", False))
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
