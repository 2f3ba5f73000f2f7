"""What chat and completions share: model check, sampling params, choice fan-out, usage, responses.

Turns a validated request into one `GenerationRequest` per choice (`n` per prompt, seed + i when a
seed is given), runs them through `ChoiceStreams` and shapes the results; the streaming generators
always close their streams in a `finally`, so the engine is freed however the response ends.
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
from engine.api.protocol import Constraint, EngineClient, GenerationRequest, SamplingParams, TokenDelta
from server import sse
from server.config import ServerConfig
from server.errors import APIError, engine_error_body, error_body
from server.schemas import UINT64_MAX, SamplingFields, Usage, show_int
from server.streams import ChoiceResult, ChoiceStreams, unless_disconnected
from server.validation import check_text

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but the access log shows it
# Temperatures in (0, GREEDY_BELOW) are decoded greedily, as vLLM does below the same 1e-5. There the
# runner-up's weight is exp(-gap / temperature), e^-100 for a logit gap of 1e-3: only near-exact ties
# could come out differently. Far below it, logits / temperature leaves float32's range (1e-300 is 0
# in float32) and softmax gives NaN.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Call:
    """One HTTP request's identity, as every response chunk repeats it."""

    id: str
    created: int
    model: str


def new_call(prefix: str, model: str) -> Call:
    return Call(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=model)


def check_request(body: SamplingFields, engine: EngineClient, config: ServerConfig, prompts: int) -> str:
    """Validate what the schema cannot (text, model name, choice count, stream options); return the model id."""
    check_text(body)  # first: the errors below quote the client's strings
    served = engine.model_card.id
    if body.model is not None and body.model != served:
        raise APIError(
            404,
            f"The model '{body.model}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )
    if body.choices_per_prompt * prompts > config.max_choices:
        raise APIError(
            400,
            f"Too many choices: n x prompts = {body.choices_per_prompt * prompts}, "
            f"at most {config.max_choices} per request.",
            param="n",
            code="invalid_value",
        )
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400,
            "stream_options is only allowed when stream is true.",
            param="stream_options",
            code="invalid_value",
        )
    refuse_unserved(body)
    check_logit_bias(body, engine.model_card.vocab_size)
    return served


def _unsupported(param: str, what: str) -> APIError:
    return APIError(400, f"{what} is not supported by this server.", param=param, code="invalid_value")


def refuse_unserved(body: SamplingFields) -> None:
    """400 for options that would change the answer and that this server does not serve."""
    if body.best_of is not None and body.best_of > 1:
        raise _unsupported("best_of", "best_of > 1 (server-side best-of-n)")
    if body.web_search_options is not None:
        raise _unsupported("web_search_options", "Web search")
    if getattr(body, "suffix", None):
        raise _unsupported("suffix", "suffix (insertion after the completion)")
    if getattr(body, "audio", None) is not None:
        raise _unsupported("audio", "Audio output")
    modalities = getattr(body, "modalities", None)
    if modalities is not None and any(m != "text" for m in modalities):
        raise _unsupported("modalities", "Output other than text")
    if getattr(body, "top_logprobs", None) is not None and not getattr(body, "logprobs", None):
        raise APIError(
            400,
            "top_logprobs is only allowed when logprobs is true.",
            param="top_logprobs",
            code="invalid_value",
        )


def check_logit_bias(body: SamplingFields, vocab_size: int | None) -> None:
    for token, _ in body.logit_bias_pairs():
        if vocab_size is not None and token >= vocab_size:
            raise APIError(
                400,
                f"logit_bias names token id {show_int(token)}, outside the model's vocabulary: "
                f"ids are 0..{vocab_size - 1}.",
                param="logit_bias",
                code="invalid_value",
            )


def sampling(
    body: SamplingFields,
    max_tokens: int | None,
    choice: int,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    constraint: Constraint | None = None,
) -> SamplingParams:
    seed = body.seed
    if seed is not None and choice:
        seed += choice
        if seed > UINT64_MAX:
            seed -= 2**64
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=seed,
        stop=body.stop_tuple(),
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        min_p=body.min_p or 0.0,
        logit_bias=body.logit_bias_pairs(),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        constraint=constraint,
    )


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
) -> Response:
    """Streamed: start every choice (4xx errors surface here, before any byte), then stream SSE."""
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
            yield sse.event(engine_error_body(err))
        except Exception:
            logger.exception("unexpected error mid-stream")
            yield sse.event(
                error_body(
                    "The server had an internal error while processing your request.",
                    "server_error",
                    None,
                    "internal_error",
                )
            )
        finally:
            await streams.close()
        yield sse.DONE

    return StreamingResponse(body(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
