"""The models of POST /tokenize and /detokenize (vLLM's shapes).

Imports `server.schemas`, `server.chat_schemas` (a chat request's messages) and pydantic.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from server.chat_schemas import ChatMessage
from server.schemas import MAX_TOKEN_ID, RequestModel, TokenIds, first_bad_id, show_int


class TokenizeRequest(RequestModel):
    """Either `prompt` (text, as completions tokenise it) or `messages` (as chat renders them)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool | None = True  # messages only
    # Default False, as generation tokenises (vLLM's default for a prompt is True: it adds a BOS there).
    add_special_tokens: bool | None = False
    model: str | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(RequestModel):
    tokens: TokenIds
    model: str | None = None

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("the token list must not be empty")
        bad = first_bad_id(v, MAX_TOKEN_ID + 1)
        if bad is not None:
            where, token = bad
            raise ValueError(f"token id {show_int(token)} at tokens{where} is outside 0..{MAX_TOKEN_ID}")
        return v


class DetokenizeResponse(BaseModel):
    prompt: str
