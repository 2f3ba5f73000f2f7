"""Where expert weights live: `store` (every expert in pinned host memory, `pinned`), and `cache` (the GPU
expert cache, a facade over one module per part: `slots` (allocation, LRU and pins), `copies`
(host-to-device copies with CUDA events), `stalls` (stall timing), `accounting` (the hit/miss/prefetch
counters and the prediction pins), `slot_table` (the device slot table), `streamed` (the fill queue of
streamed steps) and `hooks` (the listener it reports to, the routing barrier it waits on)).

Imports `engine.api` only.
"""
