"""HTTP layer: the OpenAI-compatible FastAPI app. Talks to the engine only through
`engine.api.protocol.EngineClient`; never imports torch (a test enforces it)."""
