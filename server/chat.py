"""POST /v1/chat/completions: messages in, assistant message(s) out, streamed as SSE or not.

With tools (`server.structured`), the text of each choice is parsed for tool calls, which come back as
`message.tool_calls` (streamed: `delta.tool_calls`) with `finish_reason: "tool_calls"`.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine.api.protocol import GenerationRequest, TokenDelta
from server import sse, structured
from server.auth import require_api_key
from server.chat_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
)
from server.deps import ConfigDep, EngineDep
from server.logprobs import chat_logprobs
from server.openapi import error_responses, streamed
from server.respond import CLIENT_CLOSED, Call, new_call, open_stream, run_to_end, usage
from server.sampling import sampling
from server.schemas import Usage
from server.validation import check_request

router = APIRouter(dependencies=[Depends(require_api_key)])


def _message(m: ChatMessage) -> dict:
    # "developer" is OpenAI's newer name for "system"; chat templates only know the latter.
    out: dict = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:  # templates take the arguments as a mapping (Qwen, Hermes: `| tojson`)
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def messages_for_engine(messages: list[ChatMessage]) -> tuple[dict, ...]:
    """The messages as the engine renders them with the chat template (also for POST /tokenize)."""
    return tuple(_message(m) for m in messages)


def _chunk(
    call: Call, choices: list[ChatChunkChoice], include_usage: bool, usage: Usage | None = None
) -> bytes:
    chunk = ChatCompletionChunk(
        id=call.id, created=call.created, model=call.model, choices=choices, usage=usage
    )
    body = chunk.model_dump(exclude=None if include_usage else {"usage"})
    for out, choice in zip(body["choices"], choices, strict=True):
        out["delta"] = choice.delta.model_dump(exclude_none=True)
    return sse.event(body)


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
    plan = structured.plan(body)
    reqs = [
        GenerationRequest(
            request_id=call.id if n == 1 else f"{call.id}-{i}",
            params=sampling(
                body, body.token_limit(), i, logprobs=body.logprobs_k(), constraint=plan.constraint
            ),
            messages=messages,
            tools=plan.tools,
        )
        for i in range(n)
    ]
    include_usage = body.include_usage
    if body.stream:
        parsers = [structured.StreamedToolCalls() if plan.parse_tool_calls else None for _ in range(n)]

        def chunks(index: int, d: TokenDelta) -> list[bytes]:
            parser, finish = parsers[index], d.finish_reason
            lp = chat_logprobs(d.logprobs) if d.logprobs else None
            if parser is None:
                deltas = [ChatDelta(content=d.text)] if d.text or lp else []
            else:
                deltas = parser.deltas(d.text, final=finish is not None)
                finish = structured.finish_reason(finish, parser.calls)
                if lp and not deltas:  # the tokens' logprobs go out even while the parser holds their text
                    deltas = [ChatDelta(content="")]
            out = [
                _chunk(
                    call,
                    [ChatChunkChoice(index=index, delta=delta, logprobs=lp if j == 0 else None)],
                    include_usage,
                )
                for j, delta in enumerate(deltas)
            ]
            if finish is not None:
                out.append(
                    _chunk(
                        call,
                        [ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=finish)],
                        include_usage,
                    )
                )
            return out

        opening = [
            _chunk(
                call,
                [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))],
                include_usage,
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
    choices = []
    for i, r in enumerate(results):
        if plan.parse_tool_calls:
            content, calls = structured.message_parts(r.text)
            message = AssistantMessage(content=content, tool_calls=calls or None)
            finish = structured.finish_reason(r.finish_reason, len(calls))
        else:
            message, finish = AssistantMessage(content=r.text), r.finish_reason
        lp = chat_logprobs(r.logprobs) if body.logprobs else None
        choices.append(ChatChoice(index=i, message=message, logprobs=lp, finish_reason=finish))
    return ChatCompletion(
        id=call.id, created=call.created, model=model, usage=usage(results, n), choices=choices
    )
