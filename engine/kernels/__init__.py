"""Triton kernels, each with its eager fallback: `grouped_experts` (slot-indexed expert GEMVs and the
fused SiLU experts, with the Triton guard and the autotuner), `decode_kernels` (decode attention and the
KV write), `fused_norm`, `fused_rope`, `fused_router`.

Imports torch (and Triton where present) only.
"""
