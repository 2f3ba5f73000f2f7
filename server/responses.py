"""POST /v1/responses (OpenAI's Responses API): input items in, output items out, streamed as typed SSE
events or not.

The request becomes what chat asks the engine for: `instructions` a system message, a string input one
user message, input items messages (a `function_call` item an assistant turn's tool call, a
`function_call_output` item a tool message), `text.format` the JSON constraint and function tools the
same `structured.make_plan` as chat's. The answer is a message item with its `output_text` (the text
outside tool calls) and one `function_call` item per call. `status` is `completed`, or `incomplete` with
`incomplete_details.reason = "max_output_tokens"` when the token limit cut it.

Streamed, the events are OpenAI's: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its content (`response.content_part.added`, `response.output_text.delta`
..., `response.output_text.done`, `response.content_part.done`; or `response.function_call_arguments.delta`
and `.done`) and `response.output_item.done`, and last `response.completed` (or `response.incomplete`),
each with its `sequence_number`; a failure mid-stream is an `error` event and `response.failed`.

Finished responses are kept in memory (`server.response_store`, `MOE_RESPONSE_STORE` of them, unless the
request says `store: false`): `previous_response_id` continues one (its conversation is the earlier turns'
input and output, without their `instructions`), GET /v1/responses/{id} returns one and DELETE forgets it.
POST /v1/responses/input_tokens counts the input tokens a request would have, without generating.
`conversation` objects, prompt templates and `background` are refused with a 400 naming the field.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from engine.api.protocol import GenerationRequest
from engine.api.protocol import TokenizeRequest as EngineTokenize
from server import structured
from server.auth import require_api_key
from server.deps import ConfigDep, EngineDep, StoreDep
from server.errors import APIError
from server.logprobs import chat_logprobs
from server.openapi import error_responses, streamed_events
from server.respond import CLIENT_CLOSED, Call, open_stream, run_to_end, usage
from server.response_output import Answer, new_id
from server.response_store import MissingResponse, ResponseStore, Stored
from server.responses_schemas import (
    DeletedResponse,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputItemList,
    InputTokens,
    MessageItem,
    ResponseObject,
    ResponseRequest,
)
from server.sampling import sampling
from server.validation import check_request

router = APIRouter(dependencies=[Depends(require_api_key)])


def _refuse(param: str, what: str) -> APIError:
    return APIError(400, f"{what} is not supported by this server.", param=param, code="invalid_value")


def refuse_unserved(body: ResponseRequest) -> None:
    """400 for what this server cannot do: it answers while the request waits and keeps only responses."""
    if body.choices_per_prompt > 1:
        raise _refuse("n", "n > 1 (the Responses API has one output; use /v1/chat/completions)")
    if body.conversation is not None:
        raise _refuse("conversation", "conversation (no conversation is stored: send it in input)")
    if body.prompt is not None:
        raise _refuse("prompt", "prompt (stored prompt templates)")
    if body.background:
        raise _refuse("background", "background (a response runs while its request waits)")
    if body.max_tool_calls is not None:
        raise _refuse("max_tool_calls", "max_tool_calls")
    if body.truncation == "auto":
        raise _refuse("truncation", "truncation 'auto' (an input over the context is a 400)")
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise _refuse("text.verbosity", f"text.verbosity '{body.text.verbosity}'")


def _items(items: list | str) -> list:
    """The input as items: a string is one user message."""
    return [MessageItem(role="user", content=items)] if isinstance(items, str) else items


def turn_messages(items: list | str) -> tuple[dict, ...]:
    """Input items as chat-template messages: consecutive function calls in one assistant message (with
    the assistant text right before them), each call's output a tool message."""
    out: list[dict] = []
    for item in _items(items):
        if isinstance(item, MessageItem):
            out.append({"role": "system" if item.role == "developer" else item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": json.loads(item.arguments)},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "content": item.text(), "tool_call_id": item.call_id})
    return tuple(out)


def input_items(items: list | str) -> tuple[dict, ...]:
    """The input as the API lists it back (GET /v1/responses/{id}/input_items): each item with an id (its
    own, or a new one), user / system / developer text as `input_text` parts, assistant text as
    `output_text`."""
    out: list[dict] = []
    for item in _items(items):
        if isinstance(item, MessageItem):
            parts = [item.content] if isinstance(item.content, str) else [p.text for p in item.content]
            if item.role == "assistant":
                content = [{"type": "output_text", "text": t, "annotations": []} for t in parts]
            else:
                content = [{"type": "input_text", "text": t} for t in parts]
            out.append({"id": new_id("msg"), "type": "message", "role": item.role, "status": "completed",
                        "content": content})  # fmt: skip
        elif isinstance(item, FunctionCallItem):
            out.append({"id": item.id or new_id("fc"), "type": "function_call", "call_id": item.call_id,
                        "name": item.name, "arguments": item.arguments, "status": "completed"})  # fmt: skip
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"id": item.id or new_id("fco"), "type": "function_call_output", "call_id": item.call_id,
                        "output": item.text(), "status": "completed"})  # fmt: skip
    return tuple(out)


def earlier_turns(body: ResponseRequest, store: ResponseStore) -> tuple[dict, ...]:
    """The conversation `previous_response_id` continues (no earlier `instructions`: OpenAI does not
    carry them over); 400 naming the field when a response of it is not stored."""
    if body.previous_response_id is None:
        return ()
    if store.capacity == 0:
        raise _refuse(
            "previous_response_id",
            "previous_response_id (no response is stored: MOE_RESPONSE_STORE=0; send the conversation in input)",
        )
    try:
        return store.conversation(body.previous_response_id)
    except MissingResponse as missing:
        raise APIError(
            400,
            f"Previous response '{missing.args[0]}' is not stored here: it was never made, was deleted or "
            "evicted (MOE_RESPONSE_STORE), or another replica answered it. Send the conversation in input.",
            param="previous_response_id",
            code="invalid_value",
        ) from None


def conversation(body: ResponseRequest, store: ResponseStore) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(the messages the engine sees: instructions, earlier turns, this turn; this turn's messages)."""
    system = ({"role": "system", "content": body.instructions},) if body.instructions else ()
    turn = turn_messages(body.input)
    return system + earlier_turns(body, store) + turn, turn


def plan(body: ResponseRequest) -> structured.Plan:
    tools = [
        structured.Function(t.name, t.description, t.parameters, f"tools[{i}].name")
        for i, t in enumerate(body.tools or [])
    ]
    choice = body.tool_choice
    named = choice.name if isinstance(choice, FunctionChoice) else None
    fmt = body.text.format if body.text is not None else None
    schema = None
    if fmt is not None and fmt.type != "text":
        schema = structured.ANY_OBJECT if fmt.type == "json_object" else fmt.schema_
    return structured.make_plan(tools, None if named else choice, named, schema, body.parallel_tool_calls)


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses={**streamed_events("ResponseObject"), **error_responses(400, 404, 413, 429, 500, 503)},
)
async def create_response(
    body: ResponseRequest, request: Request, engine: EngineDep, config: ConfigDep, store: StoreDep
) -> Response | dict:
    model = check_request(body, engine, config, prompts=1)
    refuse_unserved(body)
    messages, turn = conversation(body, store)
    call = Call(id=new_id("resp"), created=int(time.time()), model=model)
    p = plan(body)
    req = GenerationRequest(
        request_id=call.id,
        params=sampling(body, body.token_limit(), 0, logprobs=body.logprobs_k(), constraint=p.constraint),
        messages=messages,
        tools=p.tools,
    )

    kept = body.store is not False and store.capacity > 0

    def keep(response: dict) -> None:  # a finished response, for a later previous_response_id or GET
        if kept:
            store.put(
                call.id,
                Stored(
                    response,
                    body.previous_response_id,
                    turn + answer.output_messages(),
                    input_items(body.input),
                ),
            )

    answer = Answer(call, body, p.parse_tool_calls, on_done=keep, stored=kept)
    if body.stream:
        return await open_stream(
            request,
            engine,
            [req],
            opening=answer.opening(),
            chunks=lambda _index, d: answer.delta(d),
            usage_chunk=answer.closing,
            per_prompt=1,
            failed=answer.failed,
            done=None,
        )
    results = await run_to_end(request, engine, [req])
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    r = results[0]
    lp = chat_logprobs(r.logprobs).content if body.logprobs_k() is not None else None
    return answer.whole(r.text, r.finish_reason, lp, usage(results, 1))


@router.post(
    "/v1/responses/input_tokens",
    response_model=InputTokens,
    responses=error_responses(400, 404, 413, 500, 503),
)
async def count_input_tokens(
    body: ResponseRequest, engine: EngineDep, config: ConfigDep, store: StoreDep
) -> InputTokens:
    """The input tokens POST /v1/responses would see for the same body: instructions, the earlier turns
    of `previous_response_id`, the input, and the tools the template renders."""
    check_request(body, engine, config, prompts=1)
    refuse_unserved(body)
    limit, ctx = body.token_limit(), engine.model_card.context_length
    if limit is not None and limit > ctx - 1:  # what generating would refuse, and the schema states
        param = "max_output_tokens" if body.max_output_tokens is not None else "max_tokens"
        raise APIError(
            400,
            f"{param}={limit} does not fit the context window of {ctx}.",
            param=param,
            code="invalid_value",
        )
    messages, _ = conversation(body, store)
    tokens = await engine.tokenize(EngineTokenize(messages=messages, tools=plan(body).tools))
    return InputTokens(input_tokens=len(tokens))


def _not_stored(response_id: str) -> APIError:
    return APIError(
        404,
        f"No response '{response_id}' is stored here (deleted, evicted, answered with store: false or by "
        "another replica).",
        param="response_id",
        code="response_not_found",
    )


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=error_responses(404, 500))
async def get_response(response_id: str, store: StoreDep) -> dict:
    stored = store.get(response_id)
    if stored is None:
        raise _not_stored(response_id)
    return stored.response


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=InputItemList,
    responses=error_responses(400, 404, 500),
)
async def list_input_items(
    response_id: str,
    store: StoreDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> InputItemList:
    """A stored response's input items, newest first by default, `limit` a page after the item `after`."""
    stored = store.get(response_id)
    if stored is None:
        raise _not_stored(response_id)
    items = list(stored.input_items) if order == "asc" else list(reversed(stored.input_items))
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise APIError(400, f"No input item '{after}' in response '{response_id}'.", param="after",
                           code="invalid_value")  # fmt: skip
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None,
        has_more=len(items) > limit,
    )


@router.delete(
    "/v1/responses/{response_id}", response_model=DeletedResponse, responses=error_responses(404, 500)
)
async def delete_response(response_id: str, store: StoreDep) -> DeletedResponse:
    if not store.delete(response_id):
        raise _not_stored(response_id)
    return DeletedResponse(id=response_id)
