"""Triton kernels, each with its eager fallback: `grouped_experts` (slot-indexed expert GEMVs and the
fused SiLU experts), `decode_kernels` (decode attention and the KV write), `fused_norm`, `fused_rope`,
`fused_router`; `triton_guard` (the one import of Triton, where the kernels can run) and `autotune` (the
slot-expert kernels' block configurations, timed once).

Imports torch (and Triton where present) only.
"""
