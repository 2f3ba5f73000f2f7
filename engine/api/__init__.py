"""The engine's contract with everything outside it: `protocol` (requests, deltas, the `EngineClient`
protocol), `errors`, `config` (the frozen `EngineConfig`), `policies` (the prefetch policy registry),
`stats` (plain counters the hot path fills) and `metrics` (the Prometheus registry that reads them).

Torch-free, and imports no other engine subpackage: the HTTP layer and the settings class may import it.
"""
