"""The output of POST /v1/responses: the response object, built whole from a finished generation
(`Answer.whole`) or event by event from a streamed one (`opening`, `delta`, `closing`, `failed`), with the
output items (a message with its `output_text`, a `function_call` per parsed call), their ids and the
events' sequence numbers. `server.responses` says which events come when.

Imports `engine.api.protocol`, `server.structured` (tool-call parsing), `server.logprobs` and the schemas.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from engine.api.protocol import TokenDelta
from server import sse, structured
from server.logprobs import chat_logprobs
from server.respond import Call
from server.responses_schemas import (
    IncompleteDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)
from server.schemas import Usage


def new_id(prefix: str) -> str:
    """An id as OpenAI writes them: `resp_...`, `msg_...`, `fc_...`."""
    return f"{prefix}_{uuid.uuid4().hex}"


class Answer:
    """One response object, built as the answer comes: whole (`whole`), or event by event (`opening`,
    `delta` per engine delta, `closing` with the usage, or `failed`)."""

    def __init__(
        self,
        call: Call,
        body: ResponseRequest,
        parse_tool_calls: bool,
        on_done: Callable[[dict], None] | None = None,
        stored: bool = False,
    ) -> None:
        """`on_done` gets the finished response object (completed or incomplete, not failed); `stored`:
        whether it is kept (the object's `store`)."""
        self.call, self.body, self.on_done, self.stored = call, body, on_done, stored
        self.output: list[OutputItem] = []
        self.parser = structured.StreamedToolCalls() if parse_tool_calls else None
        self._seq = 0
        self._open: OutputMessage | None = None  # the message item text goes to now
        self._where_open: dict = {}  # its item id, output index and content index, as every text event says
        self._call_head: tuple[str, str] | None = None  # (call id, name): its arguments come next
        self.finish: str | None = None

    # ------------------------------------------------------------------ the object
    def response(self, status: str, usage: Usage | None = None, error: dict | None = None) -> dict:
        body, done = self.body, status in ("completed", "incomplete")
        fmt = body.text.format if body.text is not None and body.text.format is not None else None
        obj = ResponseObject(
            id=self.call.id,
            created_at=self.call.created,
            status=status,
            completed_at=int(time.time()) if done else None,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            model=self.call.model,
            instructions=body.instructions,
            output=self.output,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            tool_choice=body.tool_choice or ("auto" if body.tools else "none"),
            tools=body.tools or [],
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            max_output_tokens=body.token_limit(),
            top_logprobs=body.top_logprobs,
            text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            metadata=body.metadata or {},
            user=body.user,
            previous_response_id=body.previous_response_id,
            store=self.stored,
            usage=None if usage is None else _usage(usage),
        )
        return obj.model_dump(mode="json")

    def whole(self, text: str, finish: str | None, logprobs: list | None, use: Usage) -> dict:
        status = "incomplete" if finish == "length" else "completed"
        item_status = "incomplete" if status == "incomplete" else "completed"
        content, calls = structured.message_parts(text) if self.parser is not None else (text, [])
        if content or not calls:
            part = OutputText(text=content or "", logprobs=logprobs)
            self.output.append(OutputMessage(id=new_id("msg"), status=item_status, content=[part]))
        for c in calls:
            self.output.append(
                OutputFunctionCall(
                    id=new_id("fc"),
                    call_id=c.id,
                    name=c.function.name,
                    arguments=c.function.arguments,
                    status="completed",
                )
            )
        return self._done(self.response(status, use))

    def _done(self, response: dict) -> dict:
        if self.on_done is not None:
            self.on_done(response)
        return response

    def output_messages(self) -> tuple[dict, ...]:
        """The output as the chat template's assistant message: the text, and the calls it made."""
        text = "".join(
            p.text for item in self.output if isinstance(item, OutputMessage) for p in item.content
        )
        calls = [
            {
                "id": c.call_id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.loads(c.arguments)},
            }
            for c in self.output
            if isinstance(c, OutputFunctionCall)
        ]
        return ({"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})},)

    # ------------------------------------------------------------------ events
    def event(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse.named(kind, payload)

    def opening(self) -> list[bytes]:
        started = self.response("in_progress")
        return [
            self.event("response.created", response=started),
            self.event("response.in_progress", response=started),
        ]

    def _open_message(self) -> list[bytes]:
        """A new message item for the text that comes next: its `added` events."""
        self._open = OutputMessage(id=new_id("msg"), status="in_progress", content=[OutputText(text="")])
        self.output.append(self._open)
        self._where_open = {
            "item_id": self._open.id,
            "output_index": len(self.output) - 1,
            "content_index": 0,
        }
        item = self._open.model_dump(mode="json")
        return [
            self.event("response.output_item.added", output_index=len(self.output) - 1, item=item),
            self.event("response.content_part.added", **self._where(), part=_part(OutputText(text=""))),
        ]

    def _text(self, text: str, logprobs: list | None) -> list[bytes]:
        out = self._open_message() if self._open is None else []
        part = self._open.content[0]
        part.text += text
        if logprobs:
            part.logprobs = (part.logprobs or []) + logprobs
        lp = [x.model_dump(mode="json") for x in logprobs or []]
        out.append(self.event("response.output_text.delta", **self._where(), delta=text, logprobs=lp))
        return out

    def _where(self) -> dict:
        return self._where_open

    def _close_text(self, status: str) -> list[bytes]:
        if self._open is None:
            return []
        item, where, part = self._open, self._where(), self._open.content[0]
        self._open = None
        item.status = status
        lp = [x.model_dump(mode="json") for x in part.logprobs or []]
        return [
            self.event("response.output_text.done", **where, text=part.text, logprobs=lp),
            self.event("response.content_part.done", **where, part=_part(part)),
            self.event(
                "response.output_item.done",
                output_index=where["output_index"],
                item=item.model_dump(mode="json"),
            ),  # fmt: skip
        ]

    def _call(self, call_id: str, name: str, arguments: str) -> list[bytes]:
        out = self._close_text("completed")
        item = OutputFunctionCall(
            id=new_id("fc"), call_id=call_id, name=name, arguments="", status="in_progress"
        )
        self.output.append(item)
        index = len(self.output) - 1
        out.append(
            self.event("response.output_item.added", output_index=index, item=item.model_dump(mode="json"))
        )
        out.append(self.event("response.function_call_arguments.delta", item_id=item.id, output_index=index,
                              delta=arguments))  # fmt: skip
        item.arguments, item.status = arguments, "completed"
        out.append(self.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                              arguments=arguments))  # fmt: skip
        out.append(
            self.event("response.output_item.done", output_index=index, item=item.model_dump(mode="json"))
        )
        return out

    def delta(self, d: TokenDelta) -> list[bytes]:
        """The events of one engine delta (the closing ones wait for `closing`, which has the usage)."""
        lp = chat_logprobs(d.logprobs).content if d.logprobs else None
        if d.finish_reason is not None:
            self.finish = d.finish_reason
        if self.parser is None:
            return self._text(d.text, lp) if d.text or lp else []
        out, pending_lp = [], lp
        for delta in self.parser.deltas(d.text, final=d.finish_reason is not None):
            if delta.content is not None and delta.content != "":
                out += self._text(delta.content, pending_lp)
                pending_lp = None
            elif delta.tool_calls and delta.tool_calls[0].id is not None:
                head = delta.tool_calls[0]
                self._call_head = (head.id, head.function.name)
            elif delta.tool_calls and self._call_head is not None:
                out += self._call(*self._call_head, delta.tool_calls[0].function.arguments)
                self._call_head = None
        if pending_lp and self._open is not None:  # logprobs of tokens whose text the parser holds
            out += self._text("", pending_lp)
        return out

    def closing(self, use: Usage) -> bytes:
        status = "incomplete" if self.finish == "length" else "completed"  # also the last item's status
        lines = self._close_text(status)
        if not self.output:  # nothing said: an empty message, as the whole form answers
            lines += self._open_message() + self._close_text(status)
        lines.append(self.event(f"response.{status}", response=self._done(self.response(status, use))))
        return b"".join(lines)

    def failed(self, error: dict) -> list[bytes]:
        info = error.get("error", {})
        return [
            self.event("error", code=info.get("code"), message=info.get("message"), param=info.get("param")),
            self.event("response.failed", response=self.response("failed", error={"code": info.get("code"),
                                                                                   "message": info.get("message")})),
        ]  # fmt: skip


def _part(text: OutputText) -> dict:
    return text.model_dump(mode="json", exclude={"logprobs"} if text.logprobs is None else None)


def _usage(u: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens, total_tokens=u.total_tokens
    )
