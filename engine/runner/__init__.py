"""Steps over the model: `runner.ModelRunner` runs prefills and batched decode steps over a static KV cache
(`kv_cache`), choosing per step between streamed and segmented CUDA-graph steps, capturing each shape
once and replaying it (`graphs`), and eager steps on the CPU.

Imports `engine.model`, `engine.experts`, `engine.prefetch`, `engine.kernels` and `engine.api`.
"""
