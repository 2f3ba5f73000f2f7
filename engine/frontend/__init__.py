"""The engine the server talks to: `async_engine.AsyncEngine` (an `engine.api.protocol.EngineClient`).

The event loop only awaits; one engine thread owns the model and runs rounds (prefill newcomers, one
batched decode step). `startup` loads the model and makes what the rounds use, `admission` refuses bad
input before it is queued, `prompt_bound` bounds the text before tokenising, `choice` picks a step's
tokens with one host sync for all rows, `faults` tells a request's failure from a poisoned device.

May import every other engine subpackage; nothing in the engine imports it.
"""
