"""Log-probabilities of chosen and most likely tokens, with each token's text and raw bytes.

Logprobs are of the model's own distribution: `log_softmax` of the logits the sampler receives, before
logit_bias, penalties, temperature, min-p, top-k and top-p (vLLM's default; OpenAI's logprobs do not
move with the temperature either). They cost one `log_softmax` + `topk` and one host sync for a row
whose request asks for them; nothing for the others. A logprob that is -inf or NaN (a token the logits
rule out) is reported as -9999.0, as OpenAI and vLLM do, so that it stays valid JSON.

A token's bytes come from the tokenizer's vocabulary, not from decoding it alone: a byte-level BPE
token (GPT-2, Qwen, Llama 3) maps each character of its vocabulary string back to one byte
(`bytes_to_unicode`), a SentencePiece token writes `<0xNN>` byte fallbacks and `▁` for spaces, and an
added (special) token is its content in UTF-8. So a token holding part of a multi-byte character has
exactly those bytes, and its text writes the incomplete bytes as `\\xNN` (`bytes.decode(...,
"backslashreplace")`); whole characters are plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from engine.api.protocol import Logprob, TokenLogprobs

MIN_LOGPROB = -9999.0
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the one every byte-level BPE vocabulary is written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _decoder_kind(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    text = repr(decoder) if decoder is not None else ""
    if "ByteLevel" in text:
        return "byte_level"
    if "ByteFallback" in text or "Metaspace" in text or "Replace" in text:
        return "sentencepiece"
    return "decode"


def token_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


class TokenTable:
    """Token id -> (text, bytes), computed once per id."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._kind = _decoder_kind(tokenizer) if hasattr(tokenizer, "convert_ids_to_tokens") else "decode"
        self._bytes_of_char = {c: b for b, c in bytes_to_unicode().items()}
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}

    def _raw(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        if self._kind == "decode":
            return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8")
        piece = self._tok.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if self._kind == "byte_level":
            if all(c in self._bytes_of_char for c in piece):
                return bytes(self._bytes_of_char[c] for c in piece)
            return piece.encode("utf-8")
        m = _BYTE_FALLBACK.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def __call__(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._raw(token_id)
            hit = self._cache[token_id] = (token_text(raw), tuple(raw))
        return hit


Table = Callable[[int], tuple[str, tuple[int, ...]]]


def _entry(table: Table, token_id: int, logprob: float | None) -> Logprob:
    text, raw = table(token_id)
    if logprob is not None and not logprob >= MIN_LOGPROB:  # -inf, NaN
        logprob = MIN_LOGPROB
    return Logprob(token_id=token_id, token=text, bytes=raw, logprob=logprob)


def token_logprobs(logits: torch.Tensor, k: int, chosen: int, table: Table) -> TokenLogprobs:
    """logits: [V] -> the logprob of `chosen` and of the `k` most likely tokens (one host sync)."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # [V]
    k = min(k, lp.numel())
    if k:
        top = torch.topk(lp, k)  # sorted, most likely first
        values = torch.cat((lp[chosen].reshape(1), top.values)).tolist()
        ids = top.indices.tolist()
    else:
        values, ids = [float(lp[chosen])], []
    return TokenLogprobs(
        chosen=_entry(table, chosen, values[0]),
        top=tuple(_entry(table, i, v) for i, v in zip(ids, values[1:], strict=True)),
    )


def prefill_with_prompt_logprobs(
    prefill: Callable[[list[int], int], torch.Tensor], prompt_ids: list[int], k: int, table: Table
) -> tuple[torch.Tensor, tuple[TokenLogprobs, ...]]:
    """Prefill one token at a time (`prefill(ids, start)` gives the next-token logits [V]) so that every
    prompt position's logits are seen; returns the last logits and one entry per prompt token (the first
    has nothing before it: its logprob is None). The runner keeps only the last position's logits of a prefill, so
    this costs one forward per prompt token; only requests that ask (echo with logprobs) pay it."""
    out = [TokenLogprobs(chosen=_entry(table, prompt_ids[0], None))]
    logits = prefill(prompt_ids[:1], 0)
    for i in range(1, len(prompt_ids)):
        out.append(token_logprobs(logits, k, prompt_ids[i], table))
        logits = prefill(prompt_ids[i : i + 1], i)
    return logits, tuple(out)
