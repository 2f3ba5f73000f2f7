"""The real `EngineClient`: one engine thread owns the model; the event loop only awaits.

`generate()` tokenises and validates on the caller's side, then hands a `Sequence` to the
scheduler; the engine thread runs rounds: newly admitted sequences are prefilled one by one into
free KV rows (each gets its first token), then every running sequence gets one more token from one
batched decode step over KV rows 0..n-1. Each `TokenDelta` goes into the request's own asyncio queue
with `loop.call_soon_threadsafe`. A consumer that stops iterating (client gone) aborts its sequence in a
`finally`. Loading the model is `engine.frontend.startup`.

Bad input is refused before queuing (`engine.frontend.admission`). A failure inside the engine is classified
(`engine.frontend.faults`): one sequence's prefill, sampling or detokenisation failing fails that request alone with
`RequestFailed`; a failed batched decode step fails the requests of that batch; after a failure inside the
model the runner and the prefetcher are reset, and the engine serves on. A fatal fault (the device is
poisoned) answers every request with `EngineDead`, logs the cause once and marks the engine fatal:
`/health` says so and the serving process exits (`server.run`) to be restarted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

from engine.api.config import EngineConfig
from engine.api.errors import EngineDead, RequestFailed
from engine.api.metrics import GC_BUCKETS, Metrics
from engine.api.protocol import EngineHealth, GenerationRequest, ModelCard, TokenDelta, TokenizeRequest
from engine.core.grammar import BatchMasks, Grammars
from engine.core.logprobs import TokenTable, prefill_with_prompt_logprobs
from engine.core.sampling import make_generator
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.core.text_stream import TextStream
from engine.frontend import admission
from engine.frontend.choice import choose
from engine.frontend.faults import classify
from engine.frontend.heap import GCWatch, freeze_heap, thaw_heap
from engine.frontend.startup import EngineParts
from engine.model.loader import OffloadedModel
from engine.prefetch.prefetcher import Prefetcher
from engine.prefetch.routing_trace import RoutingRecorder
from engine.runner.runner import ModelRunner

log = logging.getLogger(__name__)

MODEL_STAGES = ("prefill", "decode step")  # a failure there may leave the runner or the prefetcher mid-step


class _Fatal(Exception):
    """Raised inside a round when a fault is fatal; the loop ends the engine with `cause`."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class AsyncEngine:
    def __init__(self, config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.scheduler: Scheduler[Sequence] = Scheduler(config.max_running, config.max_waiting)
        self.om: OffloadedModel | None = None
        self.runner: ModelRunner | None = None
        self.tokenizer = None
        self._card: ModelCard | None = None
        self._thread: threading.Thread | None = None
        self._gc_watch: GCWatch | None = None  # installed by start()
        self._stop = threading.Event()
        self._dead: str | None = None  # why the engine cannot serve (a fatal fault); None while it can
        self._probe = None  # the device sync that tells a poisoned device (engine.frontend.faults)
        self._max_prompt_chars: int | None = None  # longer text cannot fit (engine.frontend.prompt_bound)
        self._eos: set[int] = set()
        self._tokens: TokenTable | None = None  # token texts and bytes for logprobs
        self._grammars: Grammars | None = None  # compiles response formats and forced tool calls
        self._masks: BatchMasks | None = None  # a decode step's grammar masks, computed together
        self._seed_counter = 0
        self._rows: list[Sequence] = []  # _rows[i] decodes in KV row i
        self.prefetcher: Prefetcher | None = None
        self.recorder: RoutingRecorder | None = None

    @classmethod
    def from_config(cls, config: EngineConfig, metrics: Metrics | None = None) -> AsyncEngine:
        return cls(config, metrics)

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load the model (blocking). Called by `start()` in a worker thread; tests may call it directly."""
        parts = EngineParts(self.config, self.metrics)
        self.om, self.tokenizer, self.runner = parts.om, parts.tokenizer, parts.runner
        self.prefetcher, self.recorder = parts.prefetcher, parts.recorder
        self._card, self._max_prompt_chars, self._eos = parts.card, parts.max_prompt_chars, parts.eos
        self._tokens, self._grammars, self._masks, self._probe = (
            parts.tokens,
            parts.grammars,
            parts.masks,
            parts.probe,
        )

    async def start(self) -> None:
        if self.om is None:
            await asyncio.to_thread(self.load)
        heap = freeze_heap()  # full GC passes while serving walk only what serving allocates
        if self._gc_watch is None:  # moe_gc_pause_seconds
            self._gc_watch = GCWatch(GC_BUCKETS)
            self.metrics.attach_gc(self._gc_watch.passes)
        self._gc_watch.install()
        log.info(
            "%d objects frozen out of full GC passes (%.2f s to collect)", heap["frozen"], heap["collect_s"]
        )
        self._thread = threading.Thread(target=self._loop, name="moe-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stop.set()
        self.scheduler.abort("")  # wake the thread
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
        for seq in self.scheduler.drain():
            seq.emit(EngineDead("engine shut down"))
        if self._gc_watch is not None:
            self._gc_watch.remove()
        thaw_heap()
        if self.prefetcher is not None:
            self.prefetcher.remove()
        if self.recorder is not None and self.om is not None:
            from engine.model.fingerprint import model_fingerprint

            path = self.recorder.save(self.config.record_routing, model_fingerprint(self.om.model))
            log.info("routing of %d layer-steps written to %s", self.recorder.steps(), path)

    # ------------------------------------------------------------------ EngineClient
    @property
    def model_card(self) -> ModelCard:
        if self._card is None:
            raise EngineDead("engine not started")
        return self._card

    def health(self) -> EngineHealth:
        running, waiting = self.scheduler.counts
        if self._dead is not None:
            return EngineHealth(False, self._dead, running, waiting, fatal=True)
        if self.om is None or self._thread is None or not self._thread.is_alive():
            return EngineHealth(False, "engine not running", running, waiting)
        return EngineHealth(True, "ok", running, waiting, {"cache_slots": self.om.cache.capacity})

    def metrics_exposition(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    async def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        self.model_card  # noqa: B018 - raises EngineDead before the model is loaded
        return await asyncio.to_thread(admission.tokenize_only, self.tokenizer, request)

    async def detokenize(self, token_ids: list[int]) -> str:
        admission.check_token_ids(token_ids, self.model_card.vocab_size, "tokens")
        return await asyncio.to_thread(self.tokenizer.decode, token_ids, skip_special_tokens=False)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if self._dead is not None:
            raise self._dead_error()
        card = self.model_card
        p = request.params
        admission.check_params(p)
        admission.check_logit_bias(p, card.vocab_size)
        admission.check_prompt_size(request, self._max_prompt_chars, card.context_length)
        prompt_ids = await asyncio.to_thread(admission.tokenize, self.tokenizer, request)
        param = admission.prompt_param(request)
        admission.check_token_ids(prompt_ids, card.vocab_size, param)
        matcher = await asyncio.to_thread(admission.compile_constraint, self._grammars, p)
        max_tokens = admission.tokens_to_generate(len(prompt_ids), p.max_tokens, card.context_length, param)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenDelta | BaseException] = asyncio.Queue()

        def emit(item: TokenDelta | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's event loop is closed: nobody reads this request any more
                pass

        self._seed_counter += 1
        seq = Sequence(
            request_id=request.request_id,
            params=p,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            emit=emit,
            stream=TextStream(self.tokenizer, p.stop, context_ids=prompt_ids[-4:]),
            arrival=time.perf_counter(),
            matcher=matcher,
        )
        seq.generator = make_generator(p, self.om.device, self.config.seed * 1_000_003 + self._seed_counter)
        self.scheduler.submit(seq)
        if self._dead is not None:  # the engine died while this request was being tokenised
            self._answer_dead()
        self.metrics.set_queue(*self.scheduler.counts)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.scheduler.abort(request.request_id)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                running = self.scheduler.admit()
                for seq in self.scheduler.take_dropped():
                    self._record(seq, "abort")
                if not running:
                    self.metrics.set_queue(*self.scheduler.counts)
                    self.scheduler.wait_for_work(0.05)
                    continue
                self._round(running)
                self.runner.after_step()
                self.metrics.set_queue(*self.scheduler.counts)
        except Exception as err:  # fatal, or a failure outside any request: the engine cannot be trusted
            cause = err.cause if isinstance(err, _Fatal) else f"{type(err).__name__}: {err}"
            log.critical("fatal engine error, the engine stops serving: %s", cause, exc_info=err)
            if self.prefetcher is not None:
                try:
                    self.prefetcher.reset()
                except Exception as reset_err:
                    log.warning("prefetcher reset after the fatal error failed too: %s", reset_err)
            self._die(cause)

    def _round(self, running: list[Sequence]) -> None:
        """Prefill the newcomers, then one batched decode step for every sequence with a KV row."""
        for seq in running:
            if self.scheduler.is_aborted(seq.request_id):
                self._finish(seq, "abort", "")
        for seq in running:
            if seq.done or seq.row is not None:
                continue
            seq.scheduled_at = time.perf_counter()
            seq.row = len(self._rows)
            self._rows.append(seq)
            try:
                logits = self._prefill(seq)
            except Exception as err:
                self._fail([seq], "prefill", err)
                continue
            seq.length = len(seq.prompt_ids)
            self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            self._accept([(seq, logits, None)])
        batch = list(self._rows)
        if not batch:
            return
        constrained = [s for s in batch if s.matcher is not None]
        try:
            logits = self.runner.decode([s.out_ids[-1] for s in batch], [s.length for s in batch])  # [n, V]
        except Exception as err:  # a batched step cannot be pinned on one of its requests
            self._fail(batch, "decode step", err)
            return
        for seq in batch:  # every row's new position is in its KV row now, before any row can move
            seq.length += 1
        # the step is launched: the host computes the grammar masks while the device runs it
        masks = self._batch_masks(constrained, logits.device) if constrained else {}
        # every row's token at once (a finish then moves the last row into its hole: with all its positions)
        self._accept([(seq, logits[i], masks.get(id(seq))) for i, seq in enumerate(batch)])

    def _batch_masks(self, seqs: list[Sequence], device) -> dict:
        """id(seq) -> its allowed-token row, all rows computed together; {} if that failed (each row then
        computes its own mask in `_accept`, where a failure fails that request alone)."""
        try:
            allowed = self._masks.allowed([s.matcher for s in seqs], device)
        except Exception:
            log.warning("batched grammar masks failed; computing them row by row", exc_info=True)
            return {}
        return {id(s): allowed[i] for i, s in enumerate(seqs)}

    def _fail(self, seqs: list[Sequence], stage: str, err: Exception) -> None:
        """Fail these requests alone, or raise `_Fatal` when the fault is the device's."""
        fault = classify(err, self._probe)
        if fault.fatal:
            raise _Fatal(f"{fault.cause} (during {stage})") from err
        ids = ", ".join(s.request_id for s in seqs)
        log.error("%s failed for %s: %s", stage, ids, fault.cause, exc_info=err)
        for seq in sorted(seqs, key=lambda s: -1 if s.row is None else s.row, reverse=True):
            seq.done = True  # freed last row first: no KV row of a failed request is moved
            self._free_row(seq)
            self.scheduler.finish(seq)
            seq.emit(
                err if isinstance(err, RequestFailed) else RequestFailed(f"{stage} failed: {fault.cause}")
            )
            self._record(seq, "error")
        if stage in MODEL_STAGES:
            if self.prefetcher is not None:
                self.prefetcher.reset()
            self.runner.invalidate()

    def _prefill(self, seq: Sequence):
        """The prompt's next-token logits [V]; with prompt logprobs asked for, a delta carrying them first."""
        k = seq.params.prompt_logprobs
        if k is None:
            return self.runner.prefill(seq.row, seq.prompt_ids)
        logits, lps = prefill_with_prompt_logprobs(
            lambda ids, start: self.runner.prefill(seq.row, ids, start), seq.prompt_ids, k, self._tokens
        )
        seq.emit(TokenDelta("", (), None, len(seq.prompt_ids), 0, prompt_logprobs=lps))
        return logits

    def _accept(self, rows: list[tuple[Sequence, object, object]]) -> None:
        """Choose every row's next token (`choice.choose`: one host sync for all) and pass each on; rows are
        (sequence, its logits [V], its grammar mask when the batch's masks were computed together)."""
        try:
            choices = choose(rows, self._tokens)
        except Exception as err:  # the one sync failed: nothing says which row
            self._fail([seq for seq, _, _ in rows], "sampling", err)
            return
        for c in choices:
            if c.error is not None:
                self._fail([c.seq], "sampling", c.error)
            else:
                self._pass_on(c.seq, c.token, c.logprobs)

    def _pass_on(self, seq: Sequence, tok: int, lps: tuple) -> None:
        seq.token_at(time.perf_counter())
        seq.out_ids.append(tok)
        self.metrics.generation_tokens.inc()
        try:
            reason, text = self._next_text(seq, tok)
        except Exception as err:
            self._fail([seq], "detokenisation", err)
            return
        if reason is not None:
            self._finish(seq, reason, text, token=tok, logprobs=lps)
        else:
            seq.emit(TokenDelta(text, (tok,), None, len(seq.prompt_ids), len(seq.out_ids), lps))

    def _next_text(self, seq: Sequence, tok: int) -> tuple[str | None, str]:
        """(finish reason or None, the text the new token makes final)."""
        if tok in self._eos and not seq.params.ignore_eos:
            return "stop", seq.stream.finish()
        text, stopped = seq.stream.push(tok)
        if stopped:
            return "stop", text
        if seq.matcher is not None and seq.matcher.stopped:  # the grammar is complete: nothing may follow
            return "stop", text + seq.stream.finish()
        if len(seq.out_ids) >= seq.max_tokens:
            return "length", text + seq.stream.finish()
        return None, text

    def _free_row(self, seq: Sequence) -> None:
        """Give the sequence's KV row back; the last row's sequence moves into the hole (rows stay 0..n-1)."""
        if seq.row is None:
            return
        hole, last = seq.row, len(self._rows) - 1
        if hole != last:
            moved = self._rows[last]
            self.runner.move_row(last, hole, moved.length)
            moved.row = hole
            self._rows[hole] = moved
        self._rows.pop()
        seq.row = None

    def _finish(
        self, seq: Sequence, reason: str, text: str, token: int | None = None, logprobs: tuple = ()
    ) -> None:
        seq.done = True
        self._free_row(seq)
        self.scheduler.finish(seq)
        ids = (token,) if token is not None else ()
        seq.emit(TokenDelta(text, ids, reason, len(seq.prompt_ids), len(seq.out_ids), logprobs))
        self._record(seq, reason)

    def _record(self, seq: Sequence, reason: str) -> None:
        self.metrics.observe_request(seq.stats(reason))

    def _die(self, cause: str) -> None:
        self._dead = cause
        self._rows.clear()
        self.metrics.engine_up.set(0)
        self._answer_dead()

    def _dead_error(self) -> EngineDead:
        return EngineDead(
            f"the engine stopped after a fatal error: {self._dead}; the server exits to restart"
        )

    def _answer_dead(self) -> None:
        for seq in self.scheduler.drain():
            seq.emit(self._dead_error())
