"""Typed engine errors. Torch-free: the server maps each to an OpenAI-style error body and status."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `status` and `code` tell the HTTP layer how to answer; `param` names the field."""

    status = 500
    code = "engine_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class PromptTooLong(InvalidRequest):
    """The prompt alone does not fit in the context window."""

    code = "context_length_exceeded"


class MaxTokensTooLarge(InvalidRequest):
    """The prompt fits, but prompt + max_tokens does not."""

    code = "context_length_exceeded"


class QueueFull(EngineError):
    """More requests are waiting than MOE_MAX_WAITING allows."""

    status = 429
    code = "queue_full"
    type = "rate_limit_error"


class RequestFailed(EngineError):
    """One request failed inside the engine (its prefill, sampling, detokenisation, or the decode step it
    shared); the engine and the other requests carry on. The message names the stage and the exception."""

    status = 500
    code = "request_failed"
    type = "server_error"


class EngineDead(EngineError):
    """The engine cannot serve any more (a fatal device error, or shut down); /health reports it."""

    status = 503
    code = "engine_dead"
    type = "server_error"


class ModelLoadError(EngineError):
    """A checkpoint is missing, corrupt or does not match its config; the message names file and tensor."""

    code = "model_load_error"


class BundleMismatch(EngineError):
    """A predictor bundle was trained for another model (fingerprint differs)."""

    code = "bundle_mismatch"
