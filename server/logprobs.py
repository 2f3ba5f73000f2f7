"""The engine's `TokenLogprobs` in OpenAI's two shapes: chat's list of token objects, completions' lists.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`.
Completions (the legacy shape): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, where
`top_logprobs[j]` maps token text -> logprob for the k most likely tokens plus the chosen one (so up to
k + 1 entries), a prompt's first token has `null` in both, and `text_offset[j]` is the character at
which token j starts in the returned text. A token whose bytes are not whole UTF-8 characters is written
`bytes:\\xNN...` there, as OpenAI's legacy API writes it (chat gives the raw `bytes` instead).
"""

from __future__ import annotations

import codecs

from engine.api.protocol import Logprob, TokenLogprobs
from server.chat_schemas import ChatTokenLogprob, ChoiceLogprobs, TopLogprob
from server.completion_schemas import CompletionLogprobs


def _top(e: Logprob) -> TopLogprob:
    return TopLogprob(token=e.token, logprob=e.logprob if e.logprob is not None else 0.0, bytes=list(e.bytes))


def chat_logprobs(entries: list[TokenLogprobs] | tuple[TokenLogprobs, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            ChatTokenLogprob(
                token=e.chosen.token,
                logprob=e.chosen.logprob if e.chosen.logprob is not None else 0.0,
                bytes=list(e.chosen.bytes),
                top_logprobs=[_top(t) for t in e.top],
            )
            for e in entries
        ]
    )


def _legacy_token(e: Logprob) -> str:
    try:
        bytes(e.bytes).decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + e.token
    return e.token


class Offsets:
    """Character offsets of tokens in a text that their bytes make, one token at a time."""

    def __init__(self, start: int = 0) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = start

    def next(self, raw: tuple[int, ...]) -> int:
        at = self._chars
        self._chars += len(self._decoder.decode(bytes(raw)))
        return at


def completion_logprobs(
    entries: list[TokenLogprobs] | tuple[TokenLogprobs, ...], offsets: Offsets
) -> CompletionLogprobs:
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for e in entries:
        out.tokens.append(_legacy_token(e.chosen))
        out.token_logprobs.append(e.chosen.logprob)
        if e.chosen.logprob is None:
            out.top_logprobs.append(None)
        else:
            top = {_legacy_token(t): t.logprob for t in e.top}
            top.setdefault(_legacy_token(e.chosen), e.chosen.logprob)
            out.top_logprobs.append(top)
        out.text_offset.append(offsets.next(e.chosen.bytes))
    return out


def join(parts: list[CompletionLogprobs]) -> CompletionLogprobs:
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for p in parts:
        out.tokens += p.tokens
        out.token_logprobs += p.token_logprobs
        out.top_logprobs += p.top_logprobs
        out.text_offset += p.text_offset
    return out
