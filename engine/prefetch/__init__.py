"""Prediction ahead of the routers: `prefetcher` (the pre-attention tap, its side stream and worker thread),
`policies` (scores to ranked expert ids, for the names `engine.api.policies` lists), `build` (the scorer,
bundle and prefetcher a configuration asks for), `routing_trace` (recording routing, replaying it for
`oracle`).

Imports `engine.experts` and `engine.api`.
"""
