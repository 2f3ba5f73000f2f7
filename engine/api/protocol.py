"""The one interface between the HTTP layer and the engine. Torch-free.

The server builds a `GenerationRequest`, calls `EngineClient.generate()` and iterates the async
stream of `TokenDelta`s; it calls `abort()` when the client goes away. Validation that needs the
tokenizer (prompt length, max_tokens) happens inside `generate()` before the first delta and raises
the typed errors of `engine.api.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Constraint:
    """What the output must be, enforced token by token by a grammar (`engine.core.grammar`).

    `json`: one JSON value valid against `schema` (JSON text; `{"type": "object"}` for any object).
    `tool_calls`: `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` blocks, the name one of
    `functions` (name, parameters schema as JSON text) and the arguments valid against its schema; one
    block, or with `parallel` one or more separated by newlines.
    """

    kind: Literal["json", "tool_calls"]
    schema: str = "{}"
    functions: tuple[tuple[str, str], ...] = ()
    parallel: bool = False

    @property
    def param(self) -> str:
        """The request field an error about this constraint names."""
        return "response_format" if self.kind == "json" else "tools"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None = as many as fit in the context window
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # Added with issue 18 (engine.core.sampling applies them to each row's logits after the step):
    frequency_penalty: float = 0.0  # OpenAI: logit -= f * count over the generated tokens
    presence_penalty: float = 0.0  # OpenAI: logit -= p if the token was generated at all
    repetition_penalty: float = 1.0  # vLLM/HF, over prompt + generated: logit > 0 divided, < 0 multiplied
    min_p: float = 0.0  # vLLM: drop tokens whose probability is below min_p x the top one's
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs added to the logits
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token (the first has none)
    constraint: Constraint | None = (
        None  # grammar-constrained decoding (structured outputs, forced tool calls)
    )


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    params: SamplingParams
    prompt: str | None = None  # raw completion prompt
    messages: tuple[dict, ...] | None = None  # chat messages, rendered with the tokenizer's chat template
    prompt_token_ids: tuple[int, ...] | None = None  # already tokenised prompt (wins over prompt/messages)
    tools: tuple[dict, ...] | None = (
        None  # OpenAI function tools, rendered with the messages (engine.core.tool_calls)
    )


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability; `token` is its text, `bytes` its raw bytes (a byte-level BPE token may
    hold part of a multi-byte character: then `token` writes the odd bytes as `\\xNN`)."""

    token_id: int
    token: str
    bytes: tuple[int, ...]
    logprob: float | None  # None only for a prompt's first token: nothing comes before it


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's logprob and the `k` most likely tokens', most likely first."""

    chosen: Logprob
    top: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """New text since the previous delta. The last delta of a stream has `finish_reason` set."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per `token_ids` entry when `params.logprobs` is set
    # With `params.prompt_logprobs`, on a first delta of its own: one per prompt token (the first one's
    # `chosen.logprob` is None and its `top` empty).
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None


@dataclass(frozen=True)
class TokenizeRequest:
    """POST /tokenize: a prompt, or messages rendered with the chat template."""

    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    add_generation_prompt: bool = True  # messages only
    add_special_tokens: bool = False  # prompt: the tokenizer's BOS etc. (generation adds none); not messages
    tools: tuple[dict, ...] | None = None  # messages only: rendered by the template, as a generation's are


@dataclass(frozen=True)
class ModelCard:
    id: str
    context_length: int
    created: int = 0
    owned_by: str = "moe-prefetch"
    vocab_size: int | None = None  # token ids a prompt may hold are 0..vocab_size-1 (None: unknown)


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    detail: str = ""
    running: int = 0
    waiting: int = 0
    extra: dict = field(default_factory=dict)
    fatal: bool = False  # it will never be ok again (a poisoned device): the serving process should exit


class EngineClient(Protocol):
    """What the server needs from an engine. The real one is `engine.frontend.async_engine.AsyncEngine`."""

    @property
    def model_card(self) -> ModelCard: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Validate and enqueue; raises `engine.api.errors.*` before the first delta on bad input."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def health(self) -> EngineHealth: ...

    def metrics_exposition(self) -> tuple[bytes, str]:
        """Prometheus text exposition and its content type."""
        ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        """The token ids of a prompt or of chat messages; raises `engine.api.errors.InvalidRequest` on bad text."""
        ...

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids (special tokens included); ids must be in the vocabulary."""
        ...
