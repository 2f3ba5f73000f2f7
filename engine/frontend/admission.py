"""What `AsyncEngine.generate()` checks before a request is queued. Torch-free.

Defence in depth behind the HTTP layer's validation: anything the engine can check cheaply is refused here
as `InvalidRequest` (400) naming the parameter, so it never reaches the model. In order: sampling values
the sampler cannot use; a prompt with more characters than could ever fit the context window
(`engine.frontend.prompt_bound`, before paying for tokenisation); text the tokenizer cannot encode (a lone
surrogate, a chat template that refuses the messages); a response format or tool schema the grammar library
cannot compile; token ids outside the vocabulary; a prompt, or prompt + max_tokens, longer than the context
window.
"""

from __future__ import annotations

import math

from engine.api.errors import InvalidRequest, MaxTokensTooLarge, PromptTooLong
from engine.api.protocol import GenerationRequest, SamplingParams, TokenizeRequest
from engine.core import tool_calls
from engine.core.grammar import Grammars, Matcher

MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound (completions allow 5; the server checks that)

TOKENIZER_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, UnicodeError, LookupError)
try:  # a chat template that raises (e.g. "roles must alternate") is the request's fault
    from jinja2 import TemplateError

    TOKENIZER_ERRORS += (TemplateError,)
except ImportError:  # pragma: no cover - transformers brings jinja2 along
    pass


def prompt_param(request: GenerationRequest) -> str:
    return "messages" if request.messages is not None else "prompt"


def check_params(p: SamplingParams) -> None:
    if not (math.isfinite(p.temperature) and p.temperature >= 0.0):
        raise InvalidRequest(f"temperature={p.temperature} is not a number >= 0", param="temperature")
    if not (math.isfinite(p.top_p) and 0.0 < p.top_p <= 1.0):
        raise InvalidRequest(f"top_p={p.top_p} is not in (0, 1]", param="top_p")
    if p.top_k < 0:
        raise InvalidRequest(f"top_k={p.top_k} is negative", param="top_k")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(p, name)
        if not (math.isfinite(value) and -2.0 <= value <= 2.0):
            raise InvalidRequest(f"{name}={value} is not in [-2, 2]", param=name)
    if not (math.isfinite(p.repetition_penalty) and p.repetition_penalty > 0.0):
        raise InvalidRequest(
            f"repetition_penalty={p.repetition_penalty} is not > 0", param="repetition_penalty"
        )
    if not (math.isfinite(p.min_p) and 0.0 <= p.min_p <= 1.0):
        raise InvalidRequest(f"min_p={p.min_p} is not in [0, 1]", param="min_p")
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(p, name)
        if value is not None and not 0 <= value <= MAX_LOGPROBS:
            raise InvalidRequest(f"{name}={value} is not in [0, {MAX_LOGPROBS}]", param=name)
    for token, bias in p.logit_bias:
        if not (math.isfinite(bias) and -100.0 <= bias <= 100.0):
            raise InvalidRequest(
                f"logit_bias of token {token} is {bias}, not in [-100, 100]", param="logit_bias"
            )


def check_logit_bias(p: SamplingParams, vocab_size: int | None) -> None:
    for token, _ in p.logit_bias:
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequest(
                f"logit_bias names token id {token}, outside this model's vocabulary [0, {vocab_size})",
                param="logit_bias",
            )


def prompt_chars(request: GenerationRequest) -> int:
    """Characters of text the prompt brings (chat: the message contents; the template only adds)."""
    if request.messages is not None:
        return sum(_content_chars(m.get("content")) for m in request.messages)
    return len(request.prompt or "")


def _content_chars(content) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list | tuple):  # content parts: [{"type": "text", "text": ...}, ...]
        return sum(_content_chars(part.get("text") if isinstance(part, dict) else part) for part in content)
    return 0


def check_prompt_size(request: GenerationRequest, max_chars: int | None, context_length: int) -> None:
    """Refuse text that cannot fit before tokenising it (token id prompts are measured after)."""
    if max_chars is None or request.prompt_token_ids is not None:
        return
    chars = prompt_chars(request)
    if chars > max_chars:
        raise PromptTooLong(
            f"the prompt has {chars} characters, more than {max_chars} tokens' worth of this tokenizer's "
            f"longest tokens: it cannot fit the context window of {context_length} tokens",
            param=prompt_param(request),
        )


def tokenize(tokenizer, request: GenerationRequest) -> list[int]:
    """The prompt's token ids; text the tokenizer refuses is `InvalidRequest` naming the parameter."""
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    try:
        return _encode(tokenizer, request)
    except TOKENIZER_ERRORS as err:
        param = prompt_param(request)
        raise InvalidRequest(
            f"the {param} could not be tokenised ({type(err).__name__}: {err}); "
            "check it for unpaired surrogates or other invalid text",
            param=param,
        ) from err


def _encode(
    tok, request: GenerationRequest | TokenizeRequest, generation_prompt: bool = True, special: bool = False
) -> list[int]:
    if request.messages is not None:
        template = getattr(tok, "chat_template", None)
        tools = list(request.tools) if getattr(request, "tools", None) else None
        messages = list(request.messages)
        if template and tool_calls.template_knows_tools(template):
            kwargs = {"tools": tools} if tools else {}
        else:  # a template without tools: they (and past calls, tool results) become plain text
            messages, kwargs = tool_calls.generic_messages(messages, tools), {}
        if template:
            ids = tok.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=True, **kwargs
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return tok.encode(text + ("\nassistant:" if generation_prompt else ""), add_special_tokens=False)
    return tok.encode(request.prompt or "", add_special_tokens=special)


def tokenize_only(tokenizer, request: TokenizeRequest) -> list[int]:
    """POST /tokenize: the ids `generate()` would see (with the caller's template and special-token flags)."""
    try:
        return _encode(tokenizer, request, request.add_generation_prompt, request.add_special_tokens)
    except TOKENIZER_ERRORS as err:
        param = "messages" if request.messages is not None else "prompt"
        raise InvalidRequest(
            f"the {param} could not be tokenised ({type(err).__name__}: {err})", param=param
        ) from err


def compile_constraint(grammars: Grammars | None, p: SamplingParams) -> Matcher | None:
    """The request's grammar matcher (None without a constraint); `InvalidRequest` if it cannot compile."""
    if p.constraint is None:
        return None
    if grammars is None:
        raise InvalidRequest("this engine cannot constrain its output", param=p.constraint.param)
    return grammars.matcher(p.constraint)


def check_token_ids(ids: list[int], vocab_size: int | None, param: str) -> None:
    if vocab_size is None or not ids:
        return
    lo, hi = min(ids), max(ids)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InvalidRequest(
            f"token id {bad} is outside this model's vocabulary [0, {vocab_size})", param=param
        )


def tokens_to_generate(prompt_tokens: int, max_tokens: int | None, context_length: int, param: str) -> int:
    """max_tokens, or all the room the context window leaves; refuse what does not fit."""
    if not prompt_tokens:
        raise PromptTooLong("the prompt is empty after tokenisation", param=param)
    room = context_length - prompt_tokens
    if room < 1:
        raise PromptTooLong(
            f"the prompt has {prompt_tokens} tokens; the context window is {context_length}", param=param
        )
    wanted = max_tokens if max_tokens is not None else room
    if wanted > room:
        raise MaxTokensTooLarge(
            f"max_tokens={wanted} does not fit: the prompt has {prompt_tokens} tokens and the context "
            f"window is {context_length} (at most {room})",
            param="max_tokens",
        )
    return wanted
