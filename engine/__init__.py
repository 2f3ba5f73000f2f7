"""The engine: one request's way from the HTTP layer to the GPU and back, in subpackages along the flow.

    api  <-  frontend  ->  core
                  |
                  v
               runner  ->  model  ->  experts  ->  kernels
                  |          |           ^
                  +------> prefetch -----+

Dependencies point down and right only (a test enforces it, tests/test_layout.py):

- `api`      protocol, errors, config, policy registry, counters, Prometheus metrics. Torch-free; imports
             nothing else of the engine. The HTTP layer (`server`) imports only this and `core.tool_calls`.
- `frontend` the async engine the server talks to: admission, fault classification, the engine thread's
             rounds. Imports everything below.
- `core`     per-request state and decisions: sequences, scheduler, sampling, grammar, text and logprobs.
- `runner`   decode/prefill steps: static KV cache, step kinds, CUDA-graph capture and replay.
- `prefetch` the pre-attention tap, prediction policies, predictor bundles, routing traces.
- `model`    loading a checkpoint, the model map, presets, the built-in model, the transformers patches.
- `experts`  the expert store in pinned host memory and the GPU expert cache (slots, copies, counters).
- `kernels`  Triton kernels and their guard; import torch (and Triton where present) only.

Importing this package imports nothing heavy.
"""
