"""Run the engine generations of one HTTP request and merge their deltas; abort what is left.

A request asks for one or more choices (`n`, several prompts); each is one engine generation with
its own request id. A pump task per choice iterates `engine.generate()` into one queue, so the
handler sees deltas in arrival order tagged with the choice index. `start()` waits until every
choice produced its first delta: the engine validates (prompt length, queue space) before that,
so a bad request fails as a whole with a 4xx before any response byte is sent. `close()` runs in a
`finally`, shielded from cancellation: it stops the pumps and calls `engine.abort()` for every
generation that did not finish, which is how a client disconnect frees the engine.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from starlette.requests import Request

from engine.api.errors import EngineError
from engine.api.protocol import EngineClient, GenerationRequest, TokenDelta, TokenLogprobs

logger = logging.getLogger(__name__)
T = TypeVar("T")


class StreamBroken(EngineError):
    """The engine ended a stream without a finish reason, or aborted it on its own."""

    status = 503
    code = "generation_aborted"
    type = "server_error"


@dataclass
class ChoiceResult:
    text_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class ChoiceStreams:
    def __init__(self, engine: EngineClient, requests: list[GenerationRequest]) -> None:
        self._engine = engine
        self._requests = requests
        self._queue: asyncio.Queue[tuple[int, TokenDelta | BaseException]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._finished = [False] * len(requests)
        self._buffer: list[tuple[int, TokenDelta]] = []
        self.results = [ChoiceResult() for _ in requests]

    async def _pump(self, index: int, request: GenerationRequest) -> None:
        stream = None
        try:
            stream = self._engine.generate(request)
            if inspect.isawaitable(stream):  # also accept `async def generate(...) -> AsyncIterator`
                stream = await stream
            async for delta in stream:
                if delta.finish_reason is not None:
                    self._finished[index] = True
                await self._queue.put((index, delta))
                if delta.finish_reason is not None:
                    return
            await self._queue.put(
                (index, StreamBroken("the engine ended a generation without a finish reason"))
            )
        except Exception as err:  # handed to the handler, which maps it to an HTTP error
            await self._queue.put((index, err))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _record(self, index: int, item: TokenDelta | BaseException) -> TokenDelta:
        if isinstance(item, BaseException):
            raise item
        if item.finish_reason == "abort":
            raise StreamBroken("the engine aborted the generation")
        r = self.results[index]
        r.text_parts.append(item.text)
        r.logprobs.extend(item.logprobs)
        if item.prompt_logprobs is not None:
            r.prompt_logprobs = item.prompt_logprobs
        r.prompt_tokens = max(r.prompt_tokens, item.prompt_tokens)
        r.completion_tokens = max(r.completion_tokens, item.completion_tokens)
        if item.finish_reason is not None:
            r.finish_reason = item.finish_reason
        return item

    async def start(self) -> None:
        """Start every generation and wait for each one's first delta; raise the first error."""
        self._tasks = [asyncio.create_task(self._pump(i, r)) for i, r in enumerate(self._requests)]
        seen: set[int] = set()
        while len(seen) < len(self._requests):
            index, item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            seen.add(index)
            self._buffer.append((index, item))

    async def deltas(self) -> AsyncIterator[tuple[int, TokenDelta]]:
        """Every delta after `start()`, buffered first deltas included, until all choices finished."""
        for index, item in self._buffer:
            yield index, self._record(index, item)
        self._buffer.clear()
        while not all(r.finish_reason is not None for r in self.results):
            index, item = await self._queue.get()
            yield index, self._record(index, item)

    async def collect(self) -> list[ChoiceResult]:
        await self.start()
        async for _ in self.deltas():
            pass
        return self.results

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for request, finished in zip(self._requests, self._finished, strict=True):
                if not finished:
                    try:
                        await self._engine.abort(request.request_id)
                    except Exception:
                        logger.exception("abort of %s failed", request.request_id)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run `work` while watching the connection; on a disconnect cancel it and return (False, None)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()
