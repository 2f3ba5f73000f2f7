"""Grammar-constrained decoding: a request's `Constraint` compiled into a matcher over the vocabulary.

The library is llguidance (see docs/api.md, "Structured outputs", for why): a JSON schema or a Lark
grammar is compiled against the model's tokenizer into an `LLMatcher`, which gives, for the current
state, a bitmask of the token ids that keep the output inside the grammar, and advances by the sampled
token. `Grammars` (one per engine) holds the tokenizer wrapper, built on first use (~30 ms at a
4k vocabulary, ~3 s at 152k); `Grammars.matcher()` compiles one request's constraint (a few ms) and
raises `InvalidRequest` naming the request field when the library cannot compile it.

JSON is generated with fixed separators (", " and ": ", as `json.dumps` writes them) and no other
whitespace, so a grammar of an object closes after its last `}`: `Matcher.stopped` then says the
output is complete. EOS is in the mask only where the grammar accepts.

Torch is imported only where a mask meets the logits (`Matcher.allowed`, `BatchMasks`); compiling is
torch-free.

In a batched decode step the masks of every constrained row are computed together by `BatchMasks`,
right after the step is launched (so the host computes them while the device runs the step): one
llguidance call fills all rows, one copy takes them to the device and one expansion makes them
boolean. On a CUDA device the copy (from pinned memory) and the expansion run on a side stream, beside
the step, and the sampler's stream waits for them with an event: neither the host nor the step waits for
the other. Measured on an H200 (bench/results/grammar/): mask by mask, row by row, the cost grew with the
batch; on a helper thread started before the step, the thread hand-off cost more than it hid; with the
copy from pageable memory on the step's stream, the host blocked until the step ended and the expansion
ran after it (bench/grammar_profile.py).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from engine.api.errors import InvalidRequest, RequestFailed
from engine.api.protocol import Constraint

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def _with_options(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": JSON_OPTIONS}


def tool_call_schema(functions: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """`{"name": <one of the names>, "arguments": <that function's parameters>}`, in that order."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": json.loads(parameters)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, parameters in functions
        ]
    }


def grammar_text(c: Constraint) -> str:
    """The llguidance grammar of a constraint (its serialised form; no tokenizer needed)."""
    from llguidance import LLMatcher

    if c.kind == "json":
        schema = json.loads(c.schema)
        if not isinstance(schema, dict):
            raise InvalidRequest("the JSON schema must be an object", param=c.param)
        return LLMatcher.grammar_from_json_schema(_with_options(schema))
    call = json.dumps(_with_options(tool_call_schema(c.functions)))
    repeat = ' ("\\n" call)*' if c.parallel else ""
    lark = (
        f"start: call{repeat}\n"
        f"call: {json.dumps(TOOL_CALL_OPEN + chr(10))} %json{call} {json.dumps(chr(10) + TOOL_CALL_CLOSE)}\n"
    )
    return LLMatcher.grammar_from_lark(lark)


_SHIFTS: dict = {}  # device -> int32 [32], the bit positions of a mask word


def expand_bits(bits, vocab_size: int, device=None):
    """Bool [n, V] on `device` (default: the host) from int32 bitmask words [n, W] on the host (bit j of word
    w allows token 32 * w + j). The words cross to the device, not the V booleans; the host buffer is
    pageable, so the copy is done with it before the caller's next fill overwrites it."""
    import torch

    if device is not None:
        bits = bits.to(device)
    shifts = _SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _SHIFTS[bits.device] = torch.arange(32, dtype=torch.int32, device=bits.device)
        if shifts.is_cuda:  # made once; then read from any stream (the masks' side stream included)
            torch.cuda.synchronize(shifts.device)
    return ((bits.unsqueeze(-1) >> shifts) & 1).reshape(bits.shape[0], -1)[:, :vocab_size].bool()


class Matcher:
    """One sequence's grammar state: the allowed tokens now, advanced by each sampled token."""

    def __init__(self, ll_matcher, vocab_size: int) -> None:
        self._m = ll_matcher
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._bits = None  # int32 [1, W] bitmask buffer, allocated on the first mask

    def allowed(self, device=None):
        """Bool [V] tensor of the token ids the grammar allows next, on `device` (default: the host)."""
        import torch

        if self._bits is None:
            self._bits = torch.zeros((1, self._words), dtype=torch.int32)
        self._m.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._words * 4)
        return expand_bits(self._bits, self.vocab_size, device)[0]

    @property
    def ll(self):
        """The llguidance matcher (for `BatchMasks`)."""
        return self._m

    def advance(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise RequestFailed(f"the grammar refused token {token}: {self._m.get_error()[:300]}")

    @property
    def stopped(self) -> bool:
        """The output is complete: the grammar admits nothing more (EOS consumed, or no extension)."""
        return self._m.is_stopped()


class Grammars:
    """The engine's grammar compiler for one tokenizer and vocabulary size; thread-safe."""

    def __init__(self, hf_tokenizer, vocab_size: int) -> None:
        self._hf = hf_tokenizer
        self.vocab_size = vocab_size
        self._ll = None
        self._lock = threading.Lock()

    def _tokenizer(self):
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size)
            return self._ll

    def matcher(self, c: Constraint) -> Matcher:
        """Compile `c`; `InvalidRequest` (naming `c.param`) when the library cannot."""
        from llguidance import LLMatcher

        try:
            grammar = grammar_text(c)
        except (ValueError, TypeError) as err:
            raise InvalidRequest(f"the schema could not be compiled: {err}", param=c.param) from err
        m = LLMatcher(self._tokenizer(), grammar, log_level=0)
        if m.is_error():
            raise InvalidRequest(f"the schema could not be compiled: {m.get_error()[:500]}", param=c.param)
        return Matcher(m, self.vocab_size)


class BatchMasks:
    """The allowed-token masks of a batch's constrained rows, computed together after the step is launched.

    `allowed(matchers, device)` fills every row's bitmask in one llguidance call (it spreads the rows over
    its own threads), copies the words to `device` at once and expands them: bool [n, V], row i for
    `matchers[i]`. Called right after a decode step is launched, the host computes the masks while the
    device runs the step. Used by the engine thread only.
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._executor = None
        self._bits = None  # int32 [rows, W] host buffer, grown as needed
        self._side = None  # CUDA only: (device, side stream, pinned int32 [rows, W], event of its last copy)

    def _fill(self, matchers: list[Matcher]):
        import torch
        from llguidance import LLExecutor

        if self._executor is None:
            self._executor = LLExecutor()
        n = len(matchers)
        if self._bits is None or self._bits.shape[0] < n:
            self._bits = torch.zeros((max(n, 8), self._words), dtype=torch.int32)
        bits = self._bits[:n]
        if n == 1:  # one row: the matcher's own fill, without the executor's dispatch to its threads
            matchers[0].ll.unsafe_compute_mask_ptr(bits.data_ptr(), self._words * 4)
        else:
            self._executor.unsafe_compute_mask_ptr([(m.ll, i) for i, m in enumerate(matchers)],
                                                   bits.data_ptr(), self._words * 4, n)  # fmt: skip
        return bits

    def allowed(self, matchers: list[Matcher], device=None):
        """Bool [n, V] on `device` (default: the host); raises what llguidance raised. On a CUDA device the
        result is ready on the current stream (it waits for the side stream's copy and expansion)."""
        import torch

        bits = self._fill(matchers)
        if device is None or torch.device(device).type != "cuda":
            return expand_bits(bits, self.vocab_size, device)
        return self._beside(bits, torch.device(device))

    def _beside(self, bits, device):
        """The words to `device` and their expansion on a side stream, so they run while the step already
        queued on the current stream runs; the current stream then waits for them (an event, no host sync)."""
        import torch

        n = bits.shape[0]
        if self._side is None or self._side[0] != device or self._side[2].shape[0] < n:
            rows = max(n, self._bits.shape[0])
            pinned = torch.zeros((rows, self._words), dtype=torch.int32, pin_memory=True)
            self._side = (device, torch.cuda.Stream(device), pinned, None)
        _, side, pinned, last = self._side
        if last is not None:  # the previous copy out of the pinned words is done before they are rewritten
            last.synchronize()
        pinned[:n].copy_(bits)
        main = torch.cuda.current_stream(device)
        with torch.cuda.stream(side):
            allowed = expand_bits(pinned[:n].to(device, non_blocking=True), self.vocab_size)
            done = torch.cuda.Event()
            done.record(side)
        main.wait_event(done)
        allowed.record_stream(main)  # made on the side stream, used on the main one
        self._side = (device, side, pinned, done)
        return allowed
