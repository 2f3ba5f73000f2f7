"""The engine: model loading, expert store and cache, prefetch, generation.

Importing this package imports nothing heavy: `engine.protocol`, `engine.errors`, `engine.config` and
`engine.metrics` are torch-free so the HTTP layer can use them; the rest imports torch.
"""
