"""POST /tokenize and POST /detokenize in vLLM's shapes: text or chat messages to token ids, and back.

Open like /health (vLLM checks its API key on /v1 routes only). The text is checked as the generation
routes check it (no lone surrogates), ids against the model's vocabulary; the engine tokenises
(`EngineClient.tokenize`), so this module stays torch-free.
"""

from __future__ import annotations

from fastapi import APIRouter

from engine.api.protocol import TokenizeRequest as EngineTokenize
from server.chat import messages_for_engine
from server.deps import EngineDep
from server.errors import APIError
from server.openapi import error_responses
from server.tokenize_schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.validation import check_text, check_vocabulary

router = APIRouter()


def _check_model(model: str | None, engine: EngineDep) -> None:
    served = engine.model_card.id
    if model is not None and model != served:
        raise APIError(
            404,
            f"The model '{model}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )


@router.post("/tokenize", response_model=TokenizeResponse, responses=error_responses(400, 404, 413, 500, 503))
async def tokenize(body: TokenizeRequest, engine: EngineDep) -> TokenizeResponse:
    check_text(body)
    _check_model(body.model, engine)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(
            400, "Give exactly one of 'prompt' and 'messages'.", param="prompt", code="invalid_value"
        )
    if body.messages is not None:
        request = EngineTokenize(
            messages=messages_for_engine(body.messages),
            add_generation_prompt=body.add_generation_prompt is not False,
            add_special_tokens=bool(body.add_special_tokens),
        )
    else:
        request = EngineTokenize(prompt=body.prompt, add_special_tokens=bool(body.add_special_tokens))
    tokens = await engine.tokenize(request)
    return TokenizeResponse(count=len(tokens), max_model_len=engine.model_card.context_length, tokens=tokens)


@router.post(
    "/detokenize", response_model=DetokenizeResponse, responses=error_responses(400, 404, 413, 500, 503)
)
async def detokenize(body: DetokenizeRequest, engine: EngineDep) -> DetokenizeResponse:
    _check_model(body.model, engine)
    check_vocabulary(body.tokens, engine.model_card.vocab_size, param="tokens")
    return DetokenizeResponse(prompt=await engine.detokenize(list(body.tokens)))
