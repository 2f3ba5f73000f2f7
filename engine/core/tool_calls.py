"""Tools in the prompt and tool calls out of the text, in the Qwen/Hermes format. Torch-free.

Rendering: a chat template that knows tools (its source mentions `tools`, as Qwen's, Hermes' and
Llama's do) gets them through `apply_chat_template(..., tools=...)`, and assistant `tool_calls` and
`tool` messages as they are. A template that does not (the built-in model's) gets `generic_messages()`:
a system preamble listing the functions in `<tools></tools>` and asking for
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks (the words of Qwen's template), past
calls written as those blocks and tool results as `<tool_response>` user turns.

Parsing: `ToolCallParser` takes the generated text piece by piece and gives content and complete
calls; text that could begin `<tool_call>` is held back until it is clear. A block whose inside is not
`{"name": str, "arguments": object}` JSON stays content. Parsing a whole text is the same parser fed
once, so a streamed parse and a non-streamed one give the same calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"

PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_knows_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template


def call_block(name: str, arguments: Any) -> str:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{CLOSE}"


def generic_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages a template without tool support renders: only `role` and string `content`."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            blocks = [call_block(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            content = "\n".join(([content] if content else []) + blocks)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        preamble = PREAMBLE.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as text


def _parse_block(inner: str) -> ParsedCall | None:
    try:
        obj = json.loads(inner)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _partial_open(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of OPEN."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


class ToolCallParser:
    """Feed text with `push()`; each call returns the events it completes, `finish()` the rest.

    Events are `str` (content) or `ParsedCall`. Whitespace is held until non-blank text follows it; before
    a call, and at the end of a text that had calls, it is dropped.
    """

    def __init__(self) -> None:
        self._buf = ""  # text not yet given out: a possible OPEN prefix, or an open block
        self._in_block = False
        self._space = ""  # whitespace held until it is clear whether a call follows it
        self.calls = 0

    def _content(self, text: str, out: list) -> None:
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space = ""
        self._space += text[len(body) :]

    def push(self, text: str) -> list[str | ParsedCall]:
        out: list[str | ParsedCall] = []
        self._buf += text
        while True:
            if self._in_block:
                end = self._buf.find(CLOSE)
                if end < 0:
                    return out
                inner, rest = self._buf[:end], self._buf[end + len(CLOSE) :]
                call = _parse_block(inner.strip())
                if call is None:
                    self._content(OPEN + inner + CLOSE, out)
                else:
                    self._space = ""
                    self.calls += 1
                    out.append(call)
                self._buf, self._in_block = rest, False
                continue
            start = self._buf.find(OPEN)
            if start >= 0:
                self._content(self._buf[:start], out)
                self._buf, self._in_block = self._buf[start + len(OPEN) :], True
                continue
            keep = _partial_open(self._buf)
            self._content(self._buf[: len(self._buf) - keep], out)
            self._buf = self._buf[len(self._buf) - keep :]
            return out

    def finish(self) -> list[str | ParsedCall]:
        """The rest: an unclosed block or held-back text is content; trailing whitespace after a call is dropped."""
        out: list[str | ParsedCall] = []
        rest = (OPEN if self._in_block else "") + self._buf
        self._buf, self._in_block = "", False
        self._content(rest, out)
        if self._space and self.calls == 0:
            out.append(self._space)
        self._space = ""
        return out


def parse_all(text: str) -> tuple[str | None, list[ParsedCall]]:
    """Content (None when there is none) and calls of a whole generated text."""
    parser = ToolCallParser()
    events = parser.push(text) + parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls = [e for e in events if isinstance(e, ParsedCall)]
    return (content or None), calls
