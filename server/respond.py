"""Running a request's generations to its response: whole (`run_to_end`) or as SSE (`open_stream`), the
call identity every response chunk repeats, and the usage the response reports.

The streaming generator always closes its streams in a `finally`, so the engine is freed however the
response ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from engine.api.errors import EngineError
from engine.api.protocol import EngineClient, GenerationRequest, TokenDelta
from server import sse
from server.errors import engine_error_body, error_body
from server.schemas import Usage
from server.streams import ChoiceResult, ChoiceStreams, unless_disconnected

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but the access log shows it


@dataclass(frozen=True)
class Call:
    """One HTTP request's identity, as every response chunk repeats it."""

    id: str
    created: int
    model: str


def new_call(prefix: str, model: str) -> Call:
    return Call(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=model)


def usage(results: list[ChoiceResult], per_prompt: int) -> Usage:
    """Prompt tokens count once per prompt (not once per choice), as OpenAI counts them."""
    prompt = sum(results[i].prompt_tokens for i in range(0, len(results), per_prompt))
    completion = sum(r.completion_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def run_to_end(
    request: Request, engine: EngineClient, reqs: list[GenerationRequest]
) -> list[ChoiceResult] | None:
    """Non-streamed: every choice to its end, or None if the client went away (generations aborted)."""
    streams = ChoiceStreams(engine, reqs)
    try:
        connected, results = await unless_disconnected(request, streams.collect())
    finally:
        await streams.close()
    return results if connected else None


ChunkMaker = Callable[[int, TokenDelta], list[bytes]]


async def open_stream(
    request: Request,
    engine: EngineClient,
    reqs: list[GenerationRequest],
    *,
    opening: list[bytes],
    chunks: ChunkMaker,
    usage_chunk: Callable[[Usage], bytes] | None,
    per_prompt: int,
    failed: Callable[[dict], list[bytes]] | None = None,
    done: bytes | None = sse.DONE,
) -> Response:
    """Streamed: start every choice (4xx errors surface here, before any byte), then stream SSE.

    A failure mid-stream sends the error body as one event, or the events `failed` makes of it; `done`
    (chat's and completions' `data: [DONE]`) closes the stream unless None."""
    streams = ChoiceStreams(engine, reqs)
    try:
        connected, _ = await unless_disconnected(request, streams.start())
    except BaseException:
        await streams.close()
        raise
    if not connected:
        await streams.close()
        return Response(status_code=CLIENT_CLOSED)

    async def body() -> AsyncIterator[bytes]:
        try:
            for line in opening:
                yield line
            async for index, delta in streams.deltas():
                for line in chunks(index, delta):
                    yield line
            if usage_chunk is not None:
                yield usage_chunk(usage(streams.results, per_prompt))
        except EngineError as err:
            logger.warning("generation failed mid-stream: %s", err.message)
            for line in failed(engine_error_body(err)) if failed else [sse.event(engine_error_body(err))]:
                yield line
        except Exception:
            logger.exception("unexpected error mid-stream")
            internal = error_body(
                "The server had an internal error while processing your request.",
                "server_error",
                None,
                "internal_error",
            )
            for line in failed(internal) if failed else [sse.event(internal)]:
                yield line
        finally:
            await streams.close()
        if done is not None:
            yield done

    return StreamingResponse(body(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
