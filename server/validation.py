"""Checks of a validated request that its schema cannot state: text that is not Unicode, token ids
outside the served model's vocabulary.

Both guard the engine: a lone surrogate makes the tokenizer (and the JSON encoder of an error that
quotes it) raise, and a token id past the embedding table is an out-of-bounds read. Each failure is
an `APIError` 400 whose `param` names the field, so such a request never reaches the engine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.errors import APIError
from server.schemas import Prompt, first_bad_id, show_int


def _lone_surrogate(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    """Every string in `value` (a request model, list or dict) with the path that names it."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, BaseModel):
        out = []
        for name, info in type(value).model_fields.items():
            key = info.alias or name  # the name the client sent (`json_schema.schema`, not `schema_`)
            out.extend(_strings(getattr(value, name), f"{path}.{key}" if path else key))
        return out
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], int):
            return []  # token ids: validated lists are all of one type, and may hold millions
        return [s for i, item in enumerate(value) for s in _strings(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in _strings(item, f"{path}.{key}")]
    return []


def check_text(body: BaseModel) -> None:
    """400 for the first string field that cannot be encoded as UTF-8 (a lone surrogate such as \\ud800)."""
    for path, text in _strings(body, ""):
        at = _lone_surrogate(text)
        if at is not None:
            raise APIError(
                400,
                f"Invalid value for '{path}': the string is not valid Unicode "
                f"(a lone surrogate, U+{ord(text[at]):04X}, at character {at}).",
                param=path,
                code="invalid_value",
            )


def check_vocabulary(prompt: Prompt, vocab_size: int | None, param: str = "prompt") -> None:
    """400 for the first token id the model has no embedding for (the schema already bounds them)."""
    bad = first_bad_id(prompt, vocab_size) if vocab_size is not None else None
    if bad is not None:
        where, token = bad
        raise APIError(
            400,
            f"Token id {show_int(token)} at {param}{where} is outside the model's vocabulary: "
            f"ids are 0..{vocab_size - 1}.",
            param=param,
            code="invalid_request",
        )
