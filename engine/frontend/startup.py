"""Start-up: from an `EngineConfig` to everything the engine thread serves with, in one blocking load.

`EngineParts(config, metrics)` resolves the device and dtype, loads the checkpoint (or the built-in model)
with the smallest expert cache, sizes the KV rows, then makes the real cache from the budget, builds the
prefetcher, warms the runner up (`engine.frontend.warmup`, MOE_WARMUP_TOKENS: a few decode steps at every
batch size, counted nowhere), makes the routing recorder, and wires the counters into `metrics`.
`AsyncEngine.load` keeps what it makes; nothing here runs a request.

May import every other engine subpackage (it is part of `engine.frontend`).
"""

from __future__ import annotations

import logging
import time

from engine.api.config import EngineConfig
from engine.api.errors import EngineError
from engine.api.metrics import Metrics
from engine.api.policies import PREDICTOR_POLICIES
from engine.api.protocol import ModelCard
from engine.core.grammar import BatchMasks, Grammars
from engine.core.logprobs import TokenTable
from engine.experts.hooks import Listener
from engine.frontend.faults import device_probe
from engine.frontend.prompt_bound import max_prompt_chars
from engine.frontend.warmup import WARMUP_TEXT, warm_up, warmup_default
from engine.model.devices import resolve_device, resolve_dtype
from engine.model.loader import CacheBudget, OffloadedModel, load_checkpoint, replace_cache
from engine.model.offload import host_experts
from engine.prefetch.build import build_prefetcher, resolve_bundle
from engine.prefetch.prefetcher import Prefetcher
from engine.prefetch.routing_trace import RoutingRecorder
from engine.runner.runner import DEFAULT_MAX_LEN, ModelRunner

log = logging.getLogger(__name__)


class EngineParts:
    """What start-up makes. Constructing one loads the model (blocking)."""

    def __init__(self, config: EngineConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.recorder: RoutingRecorder | None = None
        self.om: OffloadedModel
        self.runner: ModelRunner
        self.prefetcher: Prefetcher | None
        self._load()

    @staticmethod
    def _code_experts(om: OffloadedModel, device, budget: CacheBudget) -> None:
        """MOE_CODED_EXPERTS: code the store's experts and give the model a cache that copies codes."""
        from engine.model.coding import attach_coded

        def progress(done: int, layers: int) -> None:
            if done == layers or done % max(1, layers // 8) == 0:
                log.info("coding experts: %d of %d layers", done, layers)

        try:
            attach_coded(om.store, device, progress=progress)
        except ValueError as err:  # not bfloat16
            raise EngineError(f"MOE_CODED_EXPERTS: {err}") from None
        replace_cache(om, budget)

    def _warm_up(self, tokens: int) -> None:
        """MOE_WARMUP_TOKENS: every decode batch size once before serving, then nothing of it counted."""
        if tokens <= 0:
            return
        try:
            done = warm_up(self.runner, self.tokenizer.encode(WARMUP_TEXT), tokens)
        except Exception as err:  # a server that cannot run a step must not report ready
            raise EngineError(
                f"the warm-up at start (MOE_WARMUP_TOKENS={tokens}) failed: {type(err).__name__}: {err}"
            ) from err
        if self.prefetcher is not None:
            self.prefetcher.reset()
        self.om.counters.clear_counts()
        self.runner.reset_steps()
        self.runner.host_clock.reset()
        log.info(
            "warm-up: %d decode steps at batch sizes %s in %.2f s",
            done["decode_steps"],
            done["batches"],
            done["seconds"],
        )

    def _load(self) -> None:
        cfg = self.config
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        budget = CacheBudget(cfg.expert_cache_fraction, cfg.expert_cache_gb, cfg.eviction, cfg.lfu_half_life)
        # The KV rows come before the expert cache (sized from free GPU memory when automatic): load
        # with the smallest cache, allocate the KV rows with a one-token step, then make the real cache.
        load_budget = CacheBudget(gigabytes=0.0)
        builtin_bundle = None
        if cfg.model is None:
            from engine.model.builtin import builtin_predictors, trained_checkpoint

            builtin_bundle = builtin_predictors() if trained_checkpoint() is not None else None
        resolve_bundle(cfg.policy, cfg.predictors, builtin_bundle)  # fail before a long load, not after
        if cfg.model is None:
            from engine.model.builtin import BUILTIN_NAME, load_builtin

            om = load_builtin(device, dtype, load_budget, seed=cfg.seed)
            name = cfg.model_name or BUILTIN_NAME
        else:
            om = load_checkpoint(cfg.model, device, dtype, load_budget)
            name = cfg.model_name or cfg.model.rstrip("/").rsplit("/", 1)[-1]
        if om.tokenizer is None:
            raise EngineError(
                f"{om.source}: no tokenizer files; the server needs one to turn text into tokens"
            )
        self.om, self.tokenizer = om, om.tokenizer
        self.tokens = TokenTable(om.tokenizer)  # token texts and bytes for logprobs
        mcfg = om.model.config
        self.runner = ModelRunner(
            om,
            rows=cfg.max_running,
            max_len=cfg.max_model_len or DEFAULT_MAX_LEN,
            graphs=cfg.cuda_graphs,
            kernels=cfg.fused_kernels,
            host_reads=cfg.host_reads,
            stream_miss_mb=cfg.stream_miss_mb,
            lookahead_after_demand=cfg.lookahead_after_demand,
            predictor_overlap=cfg.predictor_overlap,
            hybrid=host_experts(om.store, om.layers, int(mcfg.hidden_size), device)
            if cfg.hybrid_misses and device.type == "cuda"
            else None,
        )
        kv_bytes = self.runner.allocate()
        replace_cache(om, budget)  # empty: the allocation step leaves no trace in the counters
        full = om.cache.load_all()
        if full:
            log.info("the cache holds every expert: preloaded, decode steps need no host decisions")
        if cfg.coded_experts and full:
            log.info("MOE_CODED_EXPERTS: nothing is ever copied with every expert resident; not coded")
        elif cfg.coded_experts:
            self._code_experts(om, device, budget)
        ctx = self.runner.max_len
        log.info(
            "KV cache: %d rows x %d positions, %.2f GB on %s", cfg.max_running, ctx, kv_bytes / 1e9, device
        )
        vocab = int(om.model.get_input_embeddings().num_embeddings)  # ids past it would index out of range
        self.card = ModelCard(id=name, context_length=ctx, created=int(time.time()), vocab_size=vocab)
        self.max_prompt_chars = max_prompt_chars(self.tokenizer, ctx)  # longer text cannot fit
        self.grammars = Grammars(self.tokenizer, vocab)  # compiles response formats and forced tool calls
        self.masks = BatchMasks(vocab)  # a decode step's grammar masks, computed together
        self.probe = device_probe(device)  # the device sync that tells a poisoned device
        eos = getattr(om.model.generation_config, "eos_token_id", None) or getattr(mcfg, "eos_token_id", None)
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos = {int(e) for e in eos_list + [self.tokenizer.eos_token_id] if e is not None}
        warming = [True]  # the warm-up's prediction latencies are not observed
        self.prefetcher = build_prefetcher(
            om,
            cfg,
            builtin_bundle,
            on_latency=lambda s: None if warming[0] else self.metrics.prediction_latency.observe(s),
            graphs_enabled=self.runner.graphs_enabled,
        )
        self._warm_up(cfg.warmup_tokens if cfg.warmup_tokens is not None else warmup_default(device))
        warming[0] = False
        if cfg.record_routing:
            self.recorder = RoutingRecorder(len(om.layers))
        route = self.recorder.record if self.recorder is not None else None
        om.cache.listen(Listener(stall=self.metrics.stall.observe, route=route))
        self.metrics.attach_cache(om.counters)
        self.metrics.attach_steps(self.runner.step_kinds)
        self.metrics.attach_host_clock(lambda: self.runner.host_clock.seconds)
        self.metrics.set_info(
            policy=cfg.policy,
            model=name,
            device=str(device),
            dtype=str(dtype),
            predictors=cfg.predictors
            or (str(builtin_bundle) if builtin_bundle and cfg.policy in PREDICTOR_POLICIES else ""),
            cache_slots=str(om.cache.capacity),
            experts_total=str(om.store.total_experts),
            coded_copies="true" if om.store.coded is not None else "false",
        )
        log.info("model %s ready on %s (%s), context %d tokens", name, device, dtype, ctx)
