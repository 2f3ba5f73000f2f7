"""Where expert weights live: `store` (every expert in pinned host memory, `pinned`), and `cache` (the GPU
expert cache: slots with LRU and pins, host-to-device copies with CUDA events, stall timing, the device
slot table of streamed steps, and the hit/miss/prefetch counters).

Imports `engine.api` only.
"""
