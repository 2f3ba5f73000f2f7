"""Incremental detokenisation and stop strings for one generated sequence. Pure Python, torch-free.

`IncrementalDetokenizer` turns token ids into text one id at a time, the way TGI does: it decodes
a small window (`prefix_offset:`) and emits only what is new since `read_offset`, so tokenizers whose
decode depends on context (SentencePiece's leading space, byte-level BPE) give the same text as a
decode of the whole sequence. A window whose text ends in U+FFFD is held back: it is an incomplete
multi-byte character whose remaining bytes are still to come. The concatenation of everything
emitted plus `flush()` equals `tokenizer.decode(all_ids)` for byte-level BPE tokenizers.

`TextStream` adds stop strings on top: text after and including the first stop string is dropped,
and text that could still be the start of a stop string is held back until it is disambiguated.

Works with any tokenizer object exposing `decode(ids, skip_special_tokens=...)` (a `tokenizers`
`Tokenizer` or any Hugging Face tokenizer). It never raises on odd ids: it emits what decode gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Token ids in, new text out; never splits a multi-byte character.

    `context_ids` (e.g. the last few prompt tokens) give the decoder left context without being
    emitted, so a SentencePiece tokenizer renders the first generated word's leading space.
    """

    def __init__(
        self, tokenizer: Decoder, *, skip_special_tokens: bool = True, context_ids: Sequence[int] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(context_ids)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    @property
    def ids(self) -> list[int]:
        return self._ids

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now final (possibly "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Return whatever is held back (an incomplete character decodes to U+FFFD), and mark it read."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextStream:
    """Detokenise one sequence and apply stop strings.

    `push(id)` returns `(text_safe_to_emit, stopped)`. Once stopped, later pushes return ("", True).
    `finish()` flushes held-back text at the end of generation (length limit or EOS).
    """

    def __init__(
        self,
        tokenizer: Decoder,
        stop: tuple[str, ...] = (),
        skip_special_tokens: bool = True,
        context_ids: Sequence[int] = (),
    ) -> None:
        self._detok = IncrementalDetokenizer(
            tokenizer, skip_special_tokens=skip_special_tokens, context_ids=context_ids
        )
        self._stops = tuple(s for s in stop if s)
        self._pending = ""  # decoded text not emitted yet because it may begin a stop string
        self.stopped = False

    def _release(self, new_text: str, final: bool) -> tuple[str, bool]:
        text = self._pending + new_text
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            self.stopped = True
            return text[:cut], True
        keep = 0 if final else _held_back(text, self._stops)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def push(self, token_id: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        new_text = self._detok.push(token_id)
        if not new_text:
            return "", False
        return self._release(new_text, final=False)

    def finish(self) -> str:
        """Flush everything held back; a stop string completed by the flush still cuts the text."""
        if self.stopped:
            return ""
        text, _ = self._release(self._detok.flush(), final=True)
        return text
