"""A small scripted engine implementing `engine.api.protocol.EngineClient`, for HTTP-layer tests.

Tokens are UTF-8 bytes (id 0-255) plus EOS (256), so multi-byte characters span several tokens and
the real `engine.core.text_stream.TextStream` must keep them whole. The text is a word sequence drawn
from a generator seeded by the prompt (greedy, temperature 0) or by the request seed (sampling); it
ends with EOS after `eos_after` tokens unless max_tokens or a stop string ends it first. Requests
beyond `max_running` wait (FIFO); more than `max_waiting` waiting raise QueueFull. The model card
states the vocabulary size unless told not to; token ids past it raise InvalidRequest. Prompts longer
than the context raise PromptTooLong, prompt + max_tokens beyond it MaxTokensTooLarge. Logprobs, when
asked for, follow a fixed made-up distribution (the chosen byte 1/2, the next bytes 1/4, 1/8, ...);
tokenize/detokenize are the byte tokenizer's. `aborted`
and `health().running` let tests see that a disconnect freed the engine. Request metrics and
simulated expert-cache counters go through the real `engine.api.metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator

from engine.api.errors import (
    EngineDead,
    EngineError,
    InvalidRequest,
    MaxTokensTooLarge,
    PromptTooLong,
    QueueFull,
)
from engine.api.metrics import Metrics
from engine.api.protocol import (
    EngineHealth,
    GenerationRequest,
    Logprob,
    ModelCard,
    TokenDelta,
    TokenizeRequest,
    TokenLogprobs,
)
from engine.api.stats import CacheCounters, RequestStats
from engine.core.text_stream import TextStream

EOS = 256
WORDS = (
    "héllo",
    "wörld",
    "日本語",
    "🙂",
    "expert",
    "cache",
    "prefetch",
    "the",
    "a",
    "naïve",
    "straße",
    "moe",
    "GPU",
)


class ByteTokenizer:
    """ids 0-255 are bytes, 256 is EOS."""

    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            elif not skip_special_tokens:
                out.extend(b"</s>")
        return out.decode("utf-8", errors="replace")


def _entry(token: int, logprob: float | None) -> Logprob:
    raw = bytes([token]) if token < 256 else b"</s>"
    return Logprob(token, raw.decode("utf-8", errors="backslashreplace"), tuple(raw), logprob)


def fake_logprobs(token: int, k: int) -> TokenLogprobs:
    """The chosen token has probability 1/2, tokens token+1, token+2, ... (mod 256) 1/4, 1/8, ..."""
    top = tuple(_entry((token + i) % 256, -math.log(2) * (i + 1)) for i in range(k))
    return TokenLogprobs(_entry(token, -math.log(2)), top)


def render_messages(messages: tuple[dict, ...]) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"


def _stable_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()[:8], "little")


class FakeEngine:
    def __init__(
        self,
        *,
        model_id: str = "fake-moe",
        context_length: int = 512,
        eos_after: int = 48,
        token_delay: float = 0.0,
        max_running: int = 4,
        max_waiting: int = 16,
        vocab_size: int | None = ByteTokenizer.vocab_size,  # what the model card says; None: unknown
    ) -> None:
        self.tokenizer = ByteTokenizer()
        self._card = ModelCard(
            id=model_id,
            context_length=context_length,
            created=1700000000,
            vocab_size=vocab_size,
        )
        self.eos_after = eos_after
        self.token_delay = token_delay
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.metrics = Metrics()
        self.cache = CacheCounters(num_layers=2)
        self.cache.slots_capacity = 8
        self.metrics.attach_cache(self.cache)
        self.running = 0
        self.waiting = 0
        self.started = False
        self.stopped = False
        self.requests: list[GenerationRequest] = []  # every request that passed validation
        self.aborted: set[str] = set()
        self.finished: dict[str, str] = {}  # request_id -> finish reason
        self.fail_with: Exception | None = None  # raised by the next generate(), for error tests
        self._abort_flags: set[str] = set()
        self._slots: asyncio.Semaphore | None = None

    @property
    def model_card(self) -> ModelCard:
        return self._card

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.max_running)
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    def health(self) -> EngineHealth:
        return EngineHealth(ok=self.started and not self.stopped, running=self.running, waiting=self.waiting)

    def metrics_exposition(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)
        self._abort_flags.add(request_id)

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        if request.messages is not None:
            text = (
                render_messages(request.messages)
                if request.add_generation_prompt
                else "".join(f"<|{m['role']}|>{m['content']}\n" for m in request.messages)
            )
            return self.tokenizer.encode(text)
        return self.tokenizer.encode(request.prompt or "")

    async def detokenize(self, token_ids: list[int]) -> str:
        bad = [i for i in token_ids if not 0 <= i < self.tokenizer.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary", param="tokens")
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            bad = [i for i in request.prompt_token_ids if not 0 <= i < self.tokenizer.vocab_size]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary", param="prompt")
            return list(request.prompt_token_ids)
        if request.messages is not None:
            return self.tokenizer.encode(render_messages(request.messages))
        return self.tokenizer.encode(request.prompt or "")

    def _script(self, request: GenerationRequest, prompt: list[int]) -> random.Random:
        p = request.params
        if p.temperature == 0:
            return random.Random(_stable_seed(repr(prompt)))
        if p.seed is not None:
            return random.Random(_stable_seed(f"{p.seed}:{p.temperature}:{prompt!r}"))
        return random.Random()

    def _validate(self, request: GenerationRequest) -> tuple[list[int], int]:
        prompt = self.prompt_ids(request)
        ctx = self._card.context_length
        if len(prompt) >= ctx:
            raise PromptTooLong(
                f"The prompt has {len(prompt)} tokens; the context window is {ctx}.",
                param="messages" if request.messages is not None else "prompt",
            )
        room = ctx - len(prompt)
        max_tokens = request.params.max_tokens
        if max_tokens is not None and max_tokens > room:
            raise MaxTokensTooLarge(
                f"max_tokens={max_tokens} plus the {len(prompt)} prompt tokens exceeds the context window of {ctx}.",
                param="max_tokens",
            )
        return prompt, room if max_tokens is None else max_tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if self.fail_with is not None:
            err, self.fail_with = self.fail_with, None
            raise err
        if self._slots is None:
            raise EngineError("engine not started")
        prompt, limit = self._validate(request)
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are waiting; the limit is {self.max_waiting}.")
        arrival = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.requests.append(request)
        self.running += 1
        scheduled = time.perf_counter()
        n, reason, first, gaps, last = 0, "abort", None, [], scheduled
        try:
            rng = self._script(request, prompt)
            stream = TextStream(self.tokenizer, request.params.stop)
            tokens: list[int] = []
            k = request.params.logprobs
            if request.params.prompt_logprobs is not None:
                pk = request.params.prompt_logprobs
                lps = (TokenLogprobs(_entry(prompt[0], None)),) + tuple(
                    fake_logprobs(t, pk) for t in prompt[1:]
                )
                yield TokenDelta("", (), None, len(prompt), 0, prompt_logprobs=lps)
            while True:
                if request.request_id in self._abort_flags:
                    yield TokenDelta(
                        "", finish_reason="abort", prompt_tokens=len(prompt), completion_tokens=n
                    )
                    return
                if not tokens:
                    tokens = list((" " + rng.choice(WORDS)).encode())
                tok = EOS if n >= self.eos_after else tokens.pop(0)
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                else:
                    await asyncio.sleep(0)
                n += 1
                now = time.perf_counter()
                if first is None:
                    first = now - arrival
                else:
                    gaps.append(now - last)
                last = now
                self.cache.requests[n % 2] += 2
                self.cache.hits_resident[n % 2] += 1
                self.cache.misses[n % 2] += 1
                lp = (fake_logprobs(tok, k),) if k is not None else ()
                text, stopped = ("", False) if tok == EOS else stream.push(tok)
                if stopped or tok == EOS or n >= limit:
                    reason = "stop" if stopped or tok == EOS else "length"
                    if not stopped:
                        text += stream.finish()
                        reason = "stop" if stream.stopped else reason
                    yield TokenDelta(text, (tok,), reason, len(prompt), n, lp)
                    return
                yield TokenDelta(text, (tok,), None, len(prompt), n, lp)
        finally:
            self.running -= 1
            self._slots.release()
            self._abort_flags.discard(request.request_id)
            self.finished[request.request_id] = reason
            self.metrics.observe_request(
                RequestStats(
                    prompt_tokens=len(prompt),
                    generation_tokens=n,
                    time_to_first_token=first,
                    time_per_output_token=tuple(gaps),
                    e2e_latency=time.perf_counter() - arrival,
                    queue_time=scheduled - arrival,
                    finish_reason=reason,
                )
            )
            self.metrics.set_queue(self.running, self.waiting)


class DiesMidStream:
    """Wraps an engine so generations fail with EngineDead after two deltas (a failure mid-stream)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, request):
        n = 0
        async for delta in self.inner.generate(request):
            yield delta
            n += 1
            if n == 2:
                raise EngineDead("the engine thread died")


class ScriptedEngine:
    """Answers every request with `text`, three characters per delta; records the requests."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.requests: list[GenerationRequest] = []

    @property
    def model_card(self) -> ModelCard:
        return ModelCard(id="scripted", context_length=512, vocab_size=1000)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self.requests.append(request)
        pieces = [self.text[i : i + 3] for i in range(0, len(self.text), 3)]
        for n, piece in enumerate(pieces, 1):
            yield TokenDelta(piece, (), "stop" if n == len(pieces) else None, 5, n)

    async def abort(self, request_id: str) -> None:
        pass

    def health(self) -> EngineHealth:
        return EngineHealth(True)

    def metrics_exposition(self) -> tuple[bytes, str]:
        return b"", "text/plain"

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
