"""POST /v1/completions: raw prompt(s) in (text or token ids), text out, streamed as SSE or not.

Choices are ordered prompt-major: choice `p * n + j` is the j-th sample of prompt p. With `echo`, each
choice's text starts with its prompt (token-id prompts detokenised by the engine), and with `logprobs`
too, the prompt tokens' logprobs come first (the engine computes them only then).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine.api.protocol import GenerationRequest, TokenDelta
from server import sse
from server.auth import require_api_key
from server.completion_schemas import Completion, CompletionChoice, CompletionRequest
from server.deps import ConfigDep, EngineDep
from server.logprobs import Offsets, completion_logprobs, join
from server.openapi import error_responses, streamed
from server.respond import CLIENT_CLOSED, Call, new_call, open_stream, run_to_end, usage
from server.sampling import sampling
from server.schemas import Usage
from server.streams import ChoiceResult
from server.validation import check_request, check_vocabulary

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
    want = body.logprobs  # None: no logprobs
    echo = bool(body.echo)
    echoes = [await _prompt_text(engine, prompt) for prompt in prompts] if echo else []
    reqs = []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            rid = call.id if len(prompts) * n == 1 else f"{call.id}-{p * n + j}"
            params = sampling(
                body, body.token_limit(), j, logprobs=want, prompt_logprobs=want if echo else None
            )
            if isinstance(prompt, str):
                reqs.append(GenerationRequest(request_id=rid, params=params, prompt=prompt))
            else:
                reqs.append(GenerationRequest(request_id=rid, params=params, prompt_token_ids=prompt))
    include_usage = body.include_usage
    if body.stream:
        offsets = [Offsets() for _ in reqs]
        echoed = [False] * len(reqs)

        def chunks(index: int, d: TokenDelta) -> list[bytes]:
            out = []
            if echo and not echoed[index]:
                echoed[index] = True
                prompt_text = echoes[index // n]
                lp = None
                if want is not None and d.prompt_logprobs is not None:
                    lp = completion_logprobs(d.prompt_logprobs, Offsets())
                out.append(
                    _chunk(
                        call, [CompletionChoice(index=index, text=prompt_text, logprobs=lp)], include_usage
                    )
                )
                offsets[index] = Offsets(len(prompt_text))
            if d.text or d.logprobs or d.finish_reason is not None:
                lp = completion_logprobs(d.logprobs, offsets[index]) if want is not None else None
                choice = CompletionChoice(
                    index=index, text=d.text, logprobs=lp, finish_reason=d.finish_reason
                )
                out.append(_chunk(call, [choice], include_usage))
            return out

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
        choices=[_choice(i, r, echoes[i // n] if echo else None, want) for i, r in enumerate(results)],
    )


async def _prompt_text(engine: EngineDep, prompt: str | tuple[int, ...]) -> str:
    return prompt if isinstance(prompt, str) else await engine.detokenize(list(prompt))


def _choice(index: int, r: ChoiceResult, echoed: str | None, want: int | None) -> CompletionChoice:
    text = r.text if echoed is None else echoed + r.text
    lp = None
    if want is not None:
        parts = []
        if echoed is not None and r.prompt_logprobs is not None:
            parts.append(completion_logprobs(r.prompt_logprobs, Offsets()))
        parts.append(completion_logprobs(r.logprobs, Offsets(len(echoed) if echoed is not None else 0)))
        lp = join(parts)
    return CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=r.finish_reason)
