"""How much text can possibly fit the context window, known before tokenising it. Torch-free.

A token stands for at most `longest` bytes of text, so a prompt of B UTF-8 bytes has at least B / longest
tokens, and it cannot fit `context_length` tokens when B > context_length * longest. A string has no more
characters than bytes, so `len(text) > context_length * longest` is a check that costs nothing, made before
tokenising a 4 MiB prompt for seconds only to refuse it.

`longest` is measured once at load: every id of the vocabulary decoded on its own (the bytes a byte-level
BPE "Ġ"-token or a SentencePiece "▁"/"<0x0A>" piece stands for; a partial UTF-8 character decodes to
U+FFFD, 3 bytes, an overestimate, which is the safe side), special tokens included. The bound holds only
if tokenising never drops or merges text, so `shrink_factor` reads the fast tokenizer's pipeline:
Unicode normalisation and lowercasing can shorten text (NFC and lowercasing turn the 3-byte Kelvin sign
into "K"/"k": factor 3; NFKC a 4-byte mathematical letter into 1 byte: factor 4), and the bound grows by
that factor; a
normaliser or pre-tokenizer that removes text (whitespace splitting, stripping, SentencePiece's precompiled
map), a WordPiece/WordLevel model, or unknown-token fusing has no bound, and then there is no pre-check
(`max_prompt_chars` is None), as for slow tokenizers.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

_SHRINKS = {"NFC": 3.0, "NFD": 3.0, "Lowercase": 3.0, "NFKC": 4.0, "NFKD": 4.0}  # most bytes in per byte out
_KEEPS = {"Prepend", "ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts"}
_SPLIT_KEEPS = {"Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"}  # not "Removed"


def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes any single token id decodes to (at least 1)."""
    ids = [[i] for i in range(len(tokenizer))]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return max((len(t.encode("utf-8", "replace")) for t in texts), default=1) or 1


def _component_factor(node: dict | None) -> float | None:
    """Shrink factor of one normaliser / pre-tokenizer (a Sequence multiplies its parts); None: unbounded."""
    if node is None:
        return 1.0
    kind = node.get("type")
    if kind == "Sequence":
        factor = 1.0
        for part in node.get("normalizers") or node.get("pretokenizers") or []:
            f = _component_factor(part)
            if f is None:
                return None
            factor *= f
        return factor
    if kind == "Replace":
        pattern = node.get("pattern", {}).get("String")
        content = node.get("content", "")
        return 1.0 if pattern is not None and len(content.encode()) >= len(pattern.encode()) else None
    if kind == "Split":
        return 1.0 if node.get("behavior") in _SPLIT_KEEPS else None
    if kind in _KEEPS:
        return 1.0
    if kind in _SHRINKS:
        return _SHRINKS[kind]
    return None  # Strip, StripAccents, BertNormalizer, Precompiled, Whitespace, ...: may drop text


def shrink_factor(tokenizer) -> float | None:
    """How much shorter (in bytes) the tokenizer may make text before it becomes tokens; None: unbounded."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # a slow tokenizer: its normalisation cannot be read
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # an exotic backend: no bound rather than a wrong one
        return None
    model = spec.get("model") or {}
    if model.get("type") not in ("BPE", "Unigram"):
        return None  # WordPiece / WordLevel map a whole unknown word to one token
    fuses_unknown = model.get("type") == "Unigram" or (model.get("fuse_unk") and model.get("unk_token"))
    if fuses_unknown and not model.get("byte_fallback"):
        return None  # a run of unknown characters becomes one token
    factors = [_component_factor(spec.get("normalizer")), _component_factor(spec.get("pre_tokenizer"))]
    if any(f is None for f in factors):
        return None
    return factors[0] * factors[1]


def max_prompt_chars(tokenizer, context_length: int) -> int | None:
    """Characters above which a prompt cannot fit `context_length` tokens; None: no cheap bound."""
    factor = shrink_factor(tokenizer)
    if factor is None:
        log.info("this tokenizer may drop text: prompts are only measured after tokenising")
        return None
    return int(context_length * longest_token_bytes(tokenizer) * factor)
