"""POST /v1/completions: raw prompt(s) in (text or token ids), text out, streamed as SSE or not.

Choices are ordered prompt-major: choice `p * n + j` is the j-th sample of prompt p.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine.protocol import GenerationRequest
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
from server.openapi import error_responses, streamed
from server.schemas import Completion, CompletionChoice, CompletionRequest, Usage
from server.validation import check_vocabulary

router = APIRouter(dependencies=[Depends(require_api_key)])


def _chunk(
    call: Call, choices: list[CompletionChoice], include_usage: bool, usage: Usage | None = None
) -> bytes:
    chunk = Completion(id=call.id, created=call.created, model=call.model, choices=choices, usage=usage)
    return sse.event(chunk.model_dump(exclude=None if include_usage else {"usage"}))


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**streamed("Completion"), **error_responses(400, 404, 413, 429, 500, 503)},
)
async def completions(
    body: CompletionRequest, request: Request, engine: EngineDep, config: ConfigDep
) -> Response | Completion:
    prompts = body.prompts()
    model = check_request(body, engine, config, prompts=len(prompts))
    check_vocabulary(body.prompt, engine.model_card.vocab_size)
    call = new_call("cmpl", model)
    n = body.choices_per_prompt
    reqs = []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            rid = call.id if len(prompts) * n == 1 else f"{call.id}-{p * n + j}"
            params = sampling(body, body.token_limit(), j)
            if isinstance(prompt, str):
                reqs.append(GenerationRequest(request_id=rid, params=params, prompt=prompt))
            else:
                reqs.append(GenerationRequest(request_id=rid, params=params, prompt_token_ids=prompt))
    include_usage = body.include_usage
    if body.stream:

        def chunks(index: int, text: str, finish: str | None) -> list[bytes]:
            if not text and finish is None:
                return []
            return [
                _chunk(call, [CompletionChoice(index=index, text=text, finish_reason=finish)], include_usage)
            ]

        return await open_stream(
            request,
            engine,
            reqs,
            opening=[],
            chunks=chunks,
            per_prompt=n,
            usage_chunk=(lambda u: _chunk(call, [], True, u)) if include_usage else None,
        )

    results = await run_to_end(request, engine, reqs)
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    return Completion(
        id=call.id,
        created=call.created,
        model=model,
        usage=usage(results, n),
        choices=[
            CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason)
            for i, r in enumerate(results)
        ],
    )
