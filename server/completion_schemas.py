"""The models of POST /v1/completions: the request (prompts as text or token ids, echo, logprobs) and the
response in the legacy shape.

Imports `server.schemas` (the shared fields) and pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from server.schemas import (
    MAX_COMPLETION_LOGPROBS,
    MAX_TOKEN_ID,
    Prompt,
    SamplingFields,
    Usage,
    first_bad_id,
    show_int,
)

FinishReasonOut = Literal["stop", "length"]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None  # refused unless empty (server.validation.check_request)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Prompt) -> Prompt:
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt list must not be empty")
            if any(isinstance(x, list) and not x for x in v):
                raise ValueError("token-id prompts must not be empty")
            bad = first_bad_id(v, MAX_TOKEN_ID + 1)
            if bad is not None:
                where, token = bad
                raise ValueError(f"token id {show_int(token)} at prompt{where} is outside 0..{MAX_TOKEN_ID}")
        return v

    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | tuple[int, ...]]:
        """One entry per prompt: a string or a tuple of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [tuple(p)]  # type: ignore[arg-type]
        return [x if isinstance(x, str) else tuple(x) for x in p]


class CompletionLogprobs(BaseModel):
    """The legacy shape: parallel lists, one entry per token; a prompt's first token has no logprob."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonOut | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
