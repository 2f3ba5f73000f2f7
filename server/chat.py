"""POST /v1/chat/completions: messages in, assistant message(s) out, streamed as SSE or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine.protocol import GenerationRequest, TokenDelta
from server import sse
from server.auth import require_api_key
from server.common import (
    CLIENT_CLOSED,
    Call,
    check_request,
    new_call,
    open_stream,
    run_to_end,
    sampling,
    usage,
)
from server.deps import ConfigDep, EngineDep
from server.logprobs import chat_logprobs
from server.openapi import error_responses, streamed
from server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Usage,
)

router = APIRouter(dependencies=[Depends(require_api_key)])


def messages_for_engine(messages: list[ChatMessage]) -> tuple[dict, ...]:
    # "developer" is OpenAI's newer name for "system"; chat templates only know the latter.
    return tuple(
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
    )


def _chunk(
    call: Call, choices: list[ChatChunkChoice], include_usage: bool, usage: Usage | None = None
) -> bytes:
    chunk = ChatCompletionChunk(
        id=call.id, created=call.created, model=call.model, choices=choices, usage=usage
    )
    return sse.event(chunk.model_dump(exclude=None if include_usage else {"usage"}))


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**streamed("ChatCompletionChunk"), **error_responses(400, 404, 413, 429, 500, 503)},
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, engine: EngineDep, config: ConfigDep
) -> Response | ChatCompletion:
    model = check_request(body, engine, config, prompts=1)
    call = new_call("chatcmpl", model)
    n = body.choices_per_prompt
    messages = messages_for_engine(body.messages)
    reqs = [
        GenerationRequest(
            request_id=call.id if n == 1 else f"{call.id}-{i}",
            params=sampling(body, body.token_limit(), i, logprobs=body.logprobs_k()),
            messages=messages,
        )
        for i in range(n)
    ]
    include_usage = body.include_usage
    if body.stream:

        def chunks(index: int, d: TokenDelta) -> list[bytes]:
            out = []
            finish = d.finish_reason
            if d.text or d.logprobs:
                lp = chat_logprobs(d.logprobs) if d.logprobs else None
                choice = ChatChunkChoice(index=index, delta={"content": d.text}, logprobs=lp)
                out.append(_chunk(call, [choice], include_usage))
            if finish is not None:
                out.append(
                    _chunk(
                        call, [ChatChunkChoice(index=index, delta={}, finish_reason=finish)], include_usage
                    )
                )
            return out

        opening = [
            _chunk(
                call, [ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""})], include_usage
            )
            for i in range(n)
        ]
        return await open_stream(
            request,
            engine,
            reqs,
            opening=opening,
            chunks=chunks,
            per_prompt=n,
            usage_chunk=(lambda u: _chunk(call, [], True, u)) if include_usage else None,
        )

    results = await run_to_end(request, engine, reqs)
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    return ChatCompletion(
        id=call.id,
        created=call.created,
        model=model,
        usage=usage(results, n),
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=r.text),
                logprobs=chat_logprobs(r.logprobs) if body.logprobs else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
    )
