"""The soak's clients: one request through the `openai` SDK (or a bad body through httpx), a level of them
at a fixed concurrency, and the long-prompt admission probe.

Streams go through the SDK's `with_streaming_response`, so the raw SSE lines are seen: every chunk is
validated with the SDK's own types, `data: [DONE]` is checked (for POST /v1/responses: its typed events,
ending in `response.completed` or `response.incomplete` with the usage), and chunk arrival times give
TTFT and inter-token gaps. A disconnecting client leaves the `async with` after a few chunks, which closes the
connection. Every request has a deadline; a level stops launching at its time budget and cancels what
is still running after a bounded drain (counted as lost).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time

import httpx
import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from bench.soak_stats import Outcome, percentile
from bench.soak_workload import Bad, Spec

# the HTTP library the openai SDK talks through (httpx; httpx2 from openai 3.5x on), whose errors can escape a
# stream; the SDK renames the classes it re-exports (Timeout too) as its own, so its default client's bases tell
SDK_HTTP = importlib.import_module(
    next(
        c.__module__
        for c in openai.DefaultHttpxClient.__mro__
        if c.__module__.split(".")[0] not in ("openai", "builtins")
    ).split(".")[0]
)


def make_client(base: str, timeout: float) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base + "/v1",
        api_key="unused",
        max_retries=0,
        timeout=openai.Timeout(timeout, connect=10.0),  # the timeout type of openai's own HTTP library
    )


def _kwargs(spec: Spec, model: str) -> dict:
    if spec.kind == "responses":
        kw: dict = dict(
            model=model, input=spec.prompt, max_output_tokens=spec.max_tokens, temperature=spec.temperature
        )
        if spec.seed is not None:
            kw["extra_body"] = {"seed": spec.seed}  # the server's extension; the SDK has no seed here
        if spec.stream:
            kw["stream"] = True
        return kw
    kw = dict(model=model, max_tokens=spec.max_tokens, temperature=spec.temperature)
    if spec.seed is not None:
        kw["seed"] = spec.seed
    if spec.kind == "chat":
        kw["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        kw["prompt"] = spec.prompt
    if spec.stream:
        kw["stream"] = True
        if spec.include_usage:
            kw["stream_options"] = {"include_usage": True}
    return kw


def _api(client: openai.AsyncOpenAI, spec: Spec):
    return {"chat": client.chat.completions, "responses": client.responses}.get(spec.kind, client.completions)


def _fail(o: Outcome, err: BaseException) -> None:
    if isinstance(err, openai.APIStatusError):
        o.status = err.status_code
        o.error = "5xx" if err.status_code >= 500 else "status"
        o.detail = str(err.message)[:200]
    elif isinstance(err, openai.APITimeoutError | TimeoutError | asyncio.TimeoutError):
        o.error, o.detail = ("lost" if o.stream else "connection"), "timeout"
    elif isinstance(err, ValueError):  # a chunk that is not JSON or not the SDK's type (pydantic errors too)
        o.error, o.detail = "truncated", f"malformed chunk: {err}"[:200]
    elif isinstance(err, openai.APIConnectionError | httpx.HTTPError | SDK_HTTP.HTTPError):
        o.error = "lost" if o.stream and o.status == 200 else "connection"
        o.detail = f"{type(err).__name__}: {err}"[:200]
    else:
        o.error, o.detail = "connection", f"{type(err).__name__}: {err}"[:200]


def _parse_chunk(kind: str, obj: dict) -> tuple[list[tuple[str, str | None]], object]:
    """[(text, finish_reason)] per choice and the usage of one SSE chunk. Chat chunks are validated with
    the SDK's own type; completion chunks only structurally (the SDK's `Completion` type requires a
    finish_reason that stream chunks do not carry, and the SDK itself builds them without validating)."""
    if kind == "chat":
        chunk = ChatCompletionChunk.model_validate(obj)
        return [(c.delta.content or "", c.finish_reason) for c in chunk.choices], chunk.usage
    choices = obj.get("choices")
    if not isinstance(choices, list) or obj.get("object") != "text_completion":
        raise ValueError(f"not a text_completion chunk: {str(obj)[:200]}")
    usage = CompletionUsage.model_validate(obj["usage"]) if obj.get("usage") else None
    return [(str(c.get("text") or ""), c.get("finish_reason")) for c in choices], usage


_EVENTS = TypeAdapter(ResponseStreamEvent)


def _response_event(obj: dict, o: Outcome) -> tuple[str | None, object]:
    """One Responses API event (validated with the SDK's type): its new text, and its usage when it is the
    last (`response.completed` or `.incomplete`, which set the finish reason)."""
    event = _EVENTS.validate_python(obj)
    if event.type == "response.output_text.delta":
        return event.delta, None
    if event.type in ("response.completed", "response.incomplete"):
        o.finish, o.done_seen = ("stop" if event.type == "response.completed" else "length"), True
        return None, event.response.usage
    if event.type in ("error", "response.failed"):
        o.error, o.detail = "truncated", f"{event.type} event"[:200]
    return None, None


def _line(kind: str, payload: str, o: Outcome) -> tuple[list[tuple[str, str | None]], tuple[int, int] | None]:
    """One SSE `data:` payload: [(text, finish_reason)] per choice, and (completion, prompt) tokens when it
    carries the usage. Chat and completions end with `[DONE]` and send a failure as `{"error": ...}`; the
    Responses API's typed events end with `response.completed` / `.incomplete` (`_response_event`)."""
    if kind == "responses":
        text, usage = _response_event(json.loads(payload), o)
        return ([(text, None)] if text else []), (usage and (usage.output_tokens, usage.input_tokens))
    if payload == "[DONE]":
        o.done_seen = True
        return [], None
    obj = json.loads(payload)
    if "error" in obj:
        o.error, o.detail = "truncated", f"error event: {obj['error'].get('message', '')}"[:200]
        return [], None
    choices, usage = _parse_chunk(kind, obj)
    return choices, (usage and (usage.completion_tokens, usage.prompt_tokens))


async def _stream(client: openai.AsyncOpenAI, spec: Spec, model: str, o: Outcome) -> None:
    usage = None
    async with _api(client, spec).with_streaming_response.create(**_kwargs(spec, model)) as resp:
        o.status = resp.status_code
        async for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            choices, chunk_usage = _line(spec.kind, line[len("data: ") :], o)
            usage = chunk_usage or usage
            for text, finish in choices:
                if text:
                    o.chunk_times.append(time.perf_counter())
                    o.text += text
                if finish is not None:
                    o.finish = finish
            if (
                spec.disconnect_after is not None
                and len(o.chunk_times) >= spec.disconnect_after
                and not o.finish
            ):
                o.disconnected = True
                break
    if o.disconnected:
        o.completion_tokens = len(o.chunk_times)  # at least this many were generated
        return
    if usage is not None:
        o.completion_tokens, o.prompt_tokens = usage
    else:
        o.completion_tokens = len(o.chunk_times)
    if o.error is None and (not o.done_seen or o.finish is None):
        o.error = "truncated" if o.done_seen else "lost"
        o.detail = f"done={o.done_seen} finish={o.finish}"


def new_outcome(spec: Spec) -> Outcome:
    return Outcome(
        spec.kind, spec.key, spec.stream, spec.temperature == 0, spec.max_tokens, time.perf_counter()
    )


async def run_spec(
    client: openai.AsyncOpenAI, spec: Spec, model: str, timeout: float, o: Outcome | None = None
) -> Outcome:
    """`o`: a fresh outcome to fill in (the caller may watch its chunk times while it runs)."""
    o = o if o is not None else new_outcome(spec)
    o.sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if spec.stream:
                await _stream(client, spec, model, o)
            elif spec.kind == "responses":
                res = await client.responses.create(**_kwargs(spec, model))
                o.status, o.text = 200, res.output_text
                o.finish = (
                    "length" if res.status == "incomplete" else "stop" if res.status == "completed" else None
                )
                if res.usage is None or o.finish is None:
                    o.error, o.detail = "truncated", f"usage={res.usage} status={res.status}"
                else:
                    o.completion_tokens, o.prompt_tokens = res.usage.output_tokens, res.usage.input_tokens
            else:
                res = await _api(client, spec).create(**_kwargs(spec, model))
                o.status = 200
                choice = res.choices[0]
                o.text = (choice.message.content if spec.kind == "chat" else choice.text) or ""
                o.finish = choice.finish_reason
                if res.usage is None or o.finish not in ("stop", "length"):
                    o.error, o.detail = "truncated", f"usage={res.usage} finish={o.finish}"
                else:
                    o.completion_tokens, o.prompt_tokens = (
                        res.usage.completion_tokens,
                        res.usage.prompt_tokens,
                    )
    except Exception as err:  # every failure is recorded, none stops the soak
        _fail(o, err)
    o.end = time.perf_counter()
    if o.error is None and o.finish == "length" and o.prompt_tokens is not None:
        if o.completion_tokens != spec.max_tokens:
            o.error, o.detail = "truncated", f"finish=length after {o.completion_tokens}/{spec.max_tokens}"
    return o


async def run_bad(http: httpx.AsyncClient, bad: Bad, timeout: float) -> Outcome:
    o = Outcome(f"bad:{bad.name}", None, False, False, 0, time.perf_counter(), bad=True)
    try:
        res = await http.post(
            bad.path, content=bad.body.encode(), headers={"content-type": "application/json"}, timeout=timeout
        )
        o.status = res.status_code
        if res.status_code >= 500:
            o.error, o.detail = "5xx", res.text[:200]
        elif res.status_code == 200:
            o.reached_engine = True
            body = res.json()
            o.finish = body["choices"][0].get("finish_reason")
            o.completion_tokens = int(body.get("usage", {}).get("completion_tokens", 0))
            o.prompt_tokens = body.get("usage", {}).get("prompt_tokens")
            if not bad.ok_200:
                o.error, o.detail = "bad_accepted", res.text[:200]
        elif not 400 <= res.status_code < 500:
            o.error, o.detail = "status", res.text[:200]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as err:
        o.error, o.detail = "connection", f"{type(err).__name__}: {err}"[:200]
    o.end = time.perf_counter()
    return o


async def run_level(
    base: str,
    model: str,
    items: list[Spec | Bad],
    concurrency: int,
    budget_s: float,
    timeout: float,
    drain_s: float,
) -> tuple[list[Outcome], list[str]]:
    """Run `items` with at most `concurrency` in flight; stop launching after `budget_s`, then wait at most
    `drain_s` for what is still running."""
    notes: list[str] = []
    client = make_client(base, timeout)
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    tasks: list[asyncio.Task] = []
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:

        async def one(item: Spec | Bad) -> Outcome:
            try:
                if isinstance(item, Bad):
                    return await run_bad(http, item, timeout)
                return await run_spec(client, item, model, timeout)
            finally:
                sem.release()

        skipped = 0
        for item in items:
            await sem.acquire()
            if time.monotonic() - t0 > budget_s:
                sem.release()
                skipped = len(items) - len(tasks)
                break
            tasks.append(asyncio.create_task(one(item)))
        if skipped:
            notes.append(f"time budget {budget_s:.0f}s: {skipped} of {len(items)} requests not sent")
        done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    await client.close()
    outs = [t.result() for t in tasks if t in done and not t.cancelled()]
    if pending:
        notes.append(f"{len(pending)} requests still running after the drain bound: cancelled, counted lost")
        now = time.perf_counter()
        for _ in pending:
            outs.append(
                Outcome("cancelled", None, True, False, 0, now, now, error="lost", detail="drain bound")
            )
    return outs, notes


def _gaps_where(outs: list[Outcome], keep) -> list[float]:
    return [b - a for o in outs for a, b in zip(o.chunk_times, o.chunk_times[1:], strict=False) if keep(b)]


async def admission_probe(
    base: str, model: str, short: str, long: str, timeout: float, streams: int = 6, max_tokens: int = 160
) -> tuple[dict, list[Outcome]]:
    """While `streams` greedy streams decode, admit one long prompt: the running streams' inter-token gaps
    before it arrived against those that ended while it was admitted (a round prefills newcomers before
    it decodes the running rows, so their next token waits for the whole prefill)."""
    client = make_client(base, timeout)
    specs = [
        Spec(f"probe{i}", "completion", True, f"{short} ({i})", max_tokens, 0.0, None, True, None)
        for i in range(streams)
    ]
    outs = [new_outcome(s) for s in specs]
    runs = [
        asyncio.create_task(run_spec(client, s, model, timeout, o)) for s, o in zip(specs, outs, strict=True)
    ]
    long_out = new_outcome(Spec("probe-long", "completion", True, long, 4, 0.0, None, True, None))
    t_send = t_first = time.perf_counter()
    stuck: list[Outcome] = []
    try:
        t0 = time.monotonic()
        while not any(t.done() for t in runs) and min(len(o.chunk_times) for o in outs) < 8:
            if time.monotonic() - t0 > timeout:
                break
            await asyncio.sleep(0.01)
        t_send = time.perf_counter()
        long_spec = Spec("probe-long", "completion", True, long, 4, 0.0, None, True, None)
        long_out = await run_spec(client, long_spec, model, timeout, long_out)
        t_first = long_out.chunk_times[0] if long_out.chunk_times else time.perf_counter()
        t1 = time.monotonic()  # until every running stream has two tokens past the admission; then leave
        while time.monotonic() - t1 < timeout and not all(
            t.done() or sum(x > t_first for x in o.chunk_times) >= 2 for t, o in zip(runs, outs, strict=True)
        ):
            await asyncio.sleep(0.01)
        stuck = [o for t, o in zip(runs, outs, strict=True) if not t.done()]
    finally:
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await client.close()
    for o in stuck:  # closed by the probe on purpose once past the admission: a disconnect, not a loss
        moved = sum(x > t_first for x in o.chunk_times) >= 2
        o.disconnected, o.error = moved, (None if moved else "lost")
        o.detail = "" if moved else "no token after the long prompt's admission within the bound"
    first_long = long_out.chunk_times[0] if long_out.chunk_times else None
    before = _gaps_where(outs, lambda b: b <= t_send)
    med = percentile(before, 50) or 0.0
    end = (first_long or t_send) + 3 * med + 0.005
    during = _gaps_where(outs, lambda b: t_send < b <= end)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    rec = {
        "streams": streams,
        "long_prompt_tokens": long_out.prompt_tokens,
        "long_ttft": r(first_long - t_send) if first_long else None,
        "gaps_before": len(before),
        "gaps_during": len(during),
        "itl_p50_before": r(percentile(before, 50)),
        "itl_p99_before": r(percentile(before, 99)),
        "itl_p99_during": r(percentile(during, 99)),
        "itl_max_during": r(max(during)) if during else None,
    }
    return rec, [long_out, *outs]
