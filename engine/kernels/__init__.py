"""Triton kernels, one a module, each with what it needs to be called: `grouped_experts` (slot-indexed
expert GEMVs and the fused SiLU experts, with their eager fallback), `decode_kernels` (decode attention
and the KV write), `fused_norm`, `fused_rope`, `fused_router`; `triton_guard` (the one import of Triton,
where the kernels can run) and `autotune` (the slot-expert kernels' block configurations, timed once).
Which transformers modules get these kernels is `engine.model`'s business (`engine.model.patches`).

Imports torch (and Triton where present) only.
"""
