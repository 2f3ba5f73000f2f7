"""Per-request state and the decisions made for it between decode steps: `sequence` (one request's
state), `scheduler` (admission order and limits), `sampling` (penalties, bias, temperature, top-k/p,
min-p), `grammar` (grammar-constrained masks), `logprobs`, `text_stream` (incremental detokenisation and
stop strings), `tool_calls` (parsing tool calls out of text; torch-free, the server uses it too).

Imports `engine.api` only.
"""
