"""Checks of a validated request that its schema cannot state: text that is not Unicode, token ids
outside the served model's vocabulary, the model name, the choice count, options this server does not
serve, logit-bias ids outside the vocabulary (`check_request` runs those of chat and completions).

The first two guard the engine: a lone surrogate makes the tokenizer (and the JSON encoder of an error that
quotes it) raise, and a token id past the embedding table is an out-of-bounds read. Each failure is
an `APIError` 400 whose `param` names the field, so such a request never reaches the engine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine.api.protocol import EngineClient
from server.config import ServerConfig
from server.errors import APIError
from server.schemas import Prompt, SamplingFields, first_bad_id, show_int


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


def check_request(body: SamplingFields, engine: EngineClient, config: ServerConfig, prompts: int) -> str:
    """Validate what the schema cannot (text, model name, choice count, stream options); return the model id."""
    check_text(body)  # first: the errors below quote the client's strings
    served = engine.model_card.id
    if body.model is not None and body.model != served:
        raise APIError(
            404,
            f"The model '{body.model}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )
    if body.choices_per_prompt * prompts > config.max_choices:
        raise APIError(
            400,
            f"Too many choices: n x prompts = {body.choices_per_prompt * prompts}, "
            f"at most {config.max_choices} per request.",
            param="n",
            code="invalid_value",
        )
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400,
            "stream_options is only allowed when stream is true.",
            param="stream_options",
            code="invalid_value",
        )
    refuse_unserved(body)
    check_logit_bias(body, engine.model_card.vocab_size)
    return served


def _unsupported(param: str, what: str) -> APIError:
    return APIError(400, f"{what} is not supported by this server.", param=param, code="invalid_value")


def refuse_unserved(body: SamplingFields) -> None:
    """400 for options that would change the answer and that this server does not serve."""
    if body.best_of is not None and body.best_of > 1:
        raise _unsupported("best_of", "best_of > 1 (server-side best-of-n)")
    if body.web_search_options is not None:
        raise _unsupported("web_search_options", "Web search")
    if getattr(body, "suffix", None):
        raise _unsupported("suffix", "suffix (insertion after the completion)")
    if getattr(body, "audio", None) is not None:
        raise _unsupported("audio", "Audio output")
    modalities = getattr(body, "modalities", None)
    if modalities is not None and any(m != "text" for m in modalities):
        raise _unsupported("modalities", "Output other than text")
    if getattr(body, "top_logprobs", None) is not None and not getattr(body, "logprobs", None):
        raise APIError(
            400,
            "top_logprobs is only allowed when logprobs is true.",
            param="top_logprobs",
            code="invalid_value",
        )


def check_logit_bias(body: SamplingFields, vocab_size: int | None) -> None:
    for token, _ in body.logit_bias_pairs():
        if vocab_size is not None and token >= vocab_size:
            raise APIError(
                400,
                f"logit_bias names token id {show_int(token)}, outside the model's vocabulary: "
                f"ids are 0..{vocab_size - 1}.",
                param="logit_bias",
                code="invalid_value",
            )
