"""Decode steps as CUDA graphs (skipped without a GPU): same tokens as the unmodified transformers
model, whole-step graphs when every expert is resident, streamed graphs (misses read from host memory)
or segmented graphs with host decisions when not, with and without prefetch policies, at batch 1 and
batched."""

from __future__ import annotations

import time

import pytest
import torch
from families import greedy_reference

from engine.api.config import EngineConfig
from engine.experts.hooks import Listener
from engine.model.fingerprint import model_fingerprint
from engine.model.loader import CacheBudget, load_checkpoint
from engine.prefetch.build import build_prefetcher
from engine.prefetch.nets import PredictorBank
from engine.prefetch.routing_trace import RoutingRecorder
from engine.runner.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
NEW = 12
FAMILIES = ["qwen3_moe", "deepseek_v2", "mixtral", "olmoe", "qwen2_moe", "gpt_oss", "phimoe", "granitemoe"]
NOT_STREAMED = {"gpt_oss"}  # biased experts: not the fused SiLU kernels, so steps stay segmented


def reference(checkpoint, prompt: list[int]) -> list[int]:
    return greedy_reference(checkpoint, prompt, NEW, device="cuda")


def greedy_with_random_bank(
    checkpoint, prompt: list[int], config: EngineConfig, graphs, hidden: int, **runner_kw
):
    """A fresh 50% cache, a random arch-2 bank of `hidden` under `config`'s prefetcher, NEW greedy tokens on
    segmented (graphs=True), eager (False) or streamed steps (`runner_kw`: the runner's other settings);
    (om, runner, tokens), the prefetcher removed."""
    om = load_checkpoint(checkpoint, CUDA, torch.float32, CacheBudget(fraction=0.5))
    torch.manual_seed(0)
    bank = PredictorBank(
        2, om.model.config.hidden_size, om.store.layout.num_experts, len(om.layers), hidden=hidden
    )
    pf = build_prefetcher(om, config, bank=bank.to(CUDA).eval(), manifest={"loss": "wbce"})
    runner = ModelRunner(om, graphs=graphs is not False, host_reads=graphs == "streamed", **runner_kw)
    tokens = runner.greedy(prompt, NEW)
    torch.cuda.synchronize()
    runner.after_step()
    pf.remove()
    return om, runner, tokens


def greedy_decode_misses(runner, om, prompt: list[int]) -> tuple[list[int], list[int]]:
    """NEW greedy tokens after a prefill of `prompt`, and each MoE layer's misses during the decode steps
    alone (the prefill's left out)."""
    logits = runner.prefill(0, prompt)
    torch.cuda.synchronize()
    before = list(om.counters.misses)
    tokens, pos = [], len(prompt)
    for _ in range(NEW):
        tokens.append(int(torch.argmax(logits)))
        logits = runner.decode([tokens[-1]], [pos])[0]
        pos += 1
    torch.cuda.synchronize()
    runner.after_step()
    return tokens, [m - b for m, b in zip(om.counters.misses, before, strict=True)]


def check_counts(om) -> dict:
    c = om.counters.totals()
    assert c["requests"] > 0
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]
    return c


@pytest.mark.parametrize("host_reads", [True, False], ids=["streamed", "segmented"])
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1], ids=["resident", "cache50", "cache10"])
@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_give_the_reference_tokens(family, fraction, host_reads, checkpoints, references):
    prompt = references[family][0]
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=fraction))
    if fraction == 1.0:
        assert om.cache.load_all()
    runner = ModelRunner(om, rows=2, host_reads=host_reads)
    tokens = runner.greedy(prompt, NEW)
    torch.cuda.synchronize()
    runner.after_step()
    streamed = host_reads and family not in NOT_STREAMED
    assert runner.streams is streamed
    assert runner.graph_failure is None
    if streamed or fraction >= 0.5:  # a segmented step needs room for a layer's experts at once
        assert runner.steps["captures"] >= 1 and runner.steps["graph"] >= NEW - 3
    assert tokens == reference(checkpoints[family], prompt)
    c = check_counts(om)
    if fraction == 1.0:
        assert c["misses"] == 0
    if streamed:
        assert c["bytes_demand"] == 0 or fraction < 1.0  # eager steps before the capture may copy
        assert c["bytes_host_read"] == om.counters.bytes_host_read
        if fraction == 0.1:
            assert om.counters.bytes_host_read > 0 and om.counters.bytes_fill > 0


@pytest.mark.parametrize("host_reads", [True, False], ids=["streamed", "segmented"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_lfu_eviction_gives_the_reference_tokens(family, host_reads, checkpoints, references):
    """MOE_EVICTION=lfu on the CUDA paths (graphs, streamed fills, segmented steps): same tokens as the
    reference; at 10% the cache evicts, so LFU's choices differ from LRU's."""
    prompt = references[family][0]
    budget = CacheBudget(fraction=0.1, eviction="lfu", lfu_half_life=4.0)
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, budget)
    runner = ModelRunner(om, rows=2, host_reads=host_reads)
    tokens = runner.greedy(prompt, NEW)
    torch.cuda.synchronize()
    runner.after_step()
    assert runner.graph_failure is None
    assert tokens == reference(checkpoints[family], prompt)
    c = check_counts(om)
    assert c["misses"] > 0


def test_streamed_steps_read_misses_from_host_and_fill_the_cache(checkpoints, references):
    """With a tiny cache every step misses; the kernels read from host memory, the fills land, and the
    device table only ever points at complete slots (the tokens match the reference)."""
    prompt = references["qwen3_moe"][0]
    om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=0.25))
    runner = ModelRunner(om, host_reads=True)
    tokens = runner.greedy(prompt, 24)
    torch.cuda.synchronize()
    runner.after_step()
    assert runner.streams and runner.graph_failure is None
    assert tokens == greedy_reference(checkpoints["qwen3_moe"], prompt, 24, device="cuda")
    c = check_counts(om)
    assert c["misses"] > 0 and c["hits_resident"] > 0
    assert om.counters.bytes_host_read == c["misses"] * om.store.layout.nbytes - om.counters.bytes_demand
    table = om.cache.slot_dev.cpu()
    for layer, e in om.cache.resident_keys()[:20]:  # every visible entry holds its expert's weights
        slot = int(table[layer, e])
        if slot >= 0:
            assert torch.equal(om.cache.pool[slot].cpu(), om.store.row(layer, e))


@pytest.mark.parametrize("policy", ["exact", "overprovision", "adaptive", "crosslayer"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "mixtral"])
def test_graphs_with_prefetch_policies(family, policy, checkpoints, references):
    prompt = references[family][0]
    got = {}
    for graphs in (True, False, "streamed"):  # True: segmented graphs
        om, runner, tokens = greedy_with_random_bank(
            checkpoints[family], prompt, EngineConfig(policy=policy), graphs, hidden=32
        )
        assert runner.graph_failure is None
        assert (runner.steps["graph"] > 0) is (graphs is not False)
        assert runner.streams is (graphs == "streamed")
        got[graphs] = (tokens, check_counts(om))
        assert got[graphs][1]["prefetch_issued"] > 0
    assert got[True][0] == got[False][0] == got["streamed"][0] == reference(checkpoints[family], prompt)
    for key in ("routed_scored", "predicted_routed", "prefetch_issued"):  # same predictions, same decisions
        assert got[True][1][key] == got[False][1][key], key
    # streamed: the predictions are scored the same; their copies are made one step behind
    assert got["streamed"][1]["routed_scored"] == got[False][1]["routed_scored"]


@pytest.mark.parametrize("policy", ["exact", "adaptive"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_graphs_with_the_predictor_kernel(family, policy, checkpoints, references, monkeypatch):
    """MOE_PREDICTOR_KERNEL: decode steps' predictors run as one Triton kernel per layer (captured in the
    taps' and the steps' graphs); the tokens stay the reference's on every step kind."""
    from engine.kernels.fused_predictor import PredictorKernels

    launches = []  # every launch goes through `run`: the scores path (adaptive) and the ids path (exact)
    run = PredictorKernels.run
    monkeypatch.setattr(
        PredictorKernels, "run", lambda self, *a, **k: launches.append(1) or run(self, *a, **k)
    )
    prompt = references[family][0]
    for graphs in (True, False, "streamed"):
        launches.clear()
        config = EngineConfig(policy=policy, predictor_kernel=True)
        om, runner, tokens = greedy_with_random_bank(checkpoints[family], prompt, config, graphs, hidden=48)
        assert runner.graph_failure is None
        assert launches, "the kernel never ran"
        assert check_counts(om)["prefetch_issued"] > 0
        assert tokens == reference(checkpoints[family], prompt), graphs


@pytest.mark.parametrize("kernel", [False, True], ids=["torch", "predictor_kernel"])
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_predictions_on_a_parallel_branch(family, kernel, checkpoints, references):
    """MOE_PREDICTOR_OVERLAP: streamed steps run the taps' predictors on a side branch of the step's graph;
    the reference tokens, and the same predictions scored against the same routing as in line."""
    prompt = references[family][0]
    got = {}
    for overlap in (False, True):
        config = EngineConfig(policy="exact", predictor_kernel=kernel)
        om, runner, tokens = greedy_with_random_bank(
            checkpoints[family], prompt, config, "streamed", hidden=48, predictor_overlap=overlap
        )
        assert runner.graph_failure is None and runner.steps["streamed"] > 0
        c = check_counts(om)
        got[overlap] = (tokens, c["routed_scored"], c["predicted_routed"])
        assert c["prefetch_issued"] > 0
    assert got[True][0] == got[False][0] == reference(checkpoints[family], prompt)
    assert got[True][1] == got[False][1] > 0  # every tap's prediction was logged and scored
    if not kernel:  # torch's path sums in a fixed order: the same ids, as right as before
        assert got[True][2] == got[False][2]


def recorded_routing(checkpoint, prompt, tmp_path, **runner_kw):
    """The routing of a greedy run of `prompt` at a 50% cache (`runner_kw`: the runner's step kind), saved
    for `oracle` to replay; its path."""
    om = load_checkpoint(checkpoint, CUDA, torch.float32, CacheBudget(fraction=0.5))
    rec = RoutingRecorder(len(om.layers))
    om.cache.listen(Listener(route=rec.record))
    ModelRunner(om, **runner_kw).greedy(prompt, NEW)
    return rec.save(tmp_path / "routing.json", model_fingerprint(om.model))


@pytest.mark.parametrize("graphs", [True, False, "streamed"], ids=["segmented", "eager", "streamed"])
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_oracle_ahead_on_every_step_kind(family, graphs, checkpoints, references, tmp_path):
    """MOE_ORACLE_AHEAD=1 on the CUDA paths: the reference tokens; in segmented and eager steps no decode
    miss past the first MoE layer (its experts were issued one layer early)."""
    prompt = references[family][0]
    path = recorded_routing(checkpoints[family], prompt, tmp_path, graphs=graphs is not False,
                            host_reads=graphs == "streamed")  # fmt: skip
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=0.5))
    pf = build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path), oracle_ahead=1))
    runner = ModelRunner(om, graphs=graphs is not False, host_reads=graphs == "streamed")
    tokens, misses = greedy_decode_misses(runner, om, prompt)
    pf.remove()
    assert runner.graph_failure is None
    assert tokens == reference(checkpoints[family], prompt)
    if graphs != "streamed":  # streamed steps fill behind the step: a prediction helps a later token
        assert sum(misses[1:]) == 0
    check_counts(om)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2"])
def test_lookahead_copies_after_the_demand_copies(family, checkpoints, references, tmp_path):
    """MOE_LOOKAHEAD_AFTER_DEMAND in segmented steps, with the oracle one and two layers ahead: the reference
    tokens, and no decode miss past the first MoE layers (the lookahead copies still land in time)."""
    prompt = references[family][0]
    path = recorded_routing(checkpoints[family], prompt, tmp_path, graphs=True, host_reads=False)
    for ahead in (1, 2):
        om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=0.5))
        if ahead >= len(om.layers):
            continue
        pf = build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path), oracle_ahead=ahead))
        runner = ModelRunner(om, graphs=True, host_reads=False, lookahead_after_demand=True)
        tokens, misses = greedy_decode_misses(runner, om, prompt)
        pf.remove()
        assert runner.graph_failure is None and runner.steps["segmented"] > 0
        assert tokens == reference(checkpoints[family], prompt), ahead
        assert sum(misses[ahead:]) == 0, (ahead, misses)
        check_counts(om)


def test_the_host_clock_times_every_segmented_step_by_phase(checkpoints, references, tmp_path):
    """The runner's `HostClock` counts each segmented step once, and splits its host time into the
    replayer's phases: every phase a prefetching step passes through got time, and together they are
    no more than the steps' wall time."""
    family = "qwen3_moe"
    prompt = references[family][0]
    path = recorded_routing(checkpoints[family], prompt, tmp_path, graphs=True, host_reads=False)
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=0.5))
    pf = build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path), oracle_ahead=1))
    runner = ModelRunner(om, graphs=True, host_reads=False)
    runner.host_clock.reset()
    t0 = time.perf_counter()
    tokens, _ = greedy_decode_misses(runner, om, prompt)
    wall_ms = 1e3 * (time.perf_counter() - t0)
    pf.remove()
    assert tokens == reference(checkpoints[family], prompt)
    clock = runner.host_clock.snapshot()
    assert clock["steps"] == runner.steps["segmented"] > 0
    for phase in ("launch", "read_copy", "predict_wait", "predict_issue", "route_wait", "route_read",
                  "route", "release"):  # fmt: skip
        assert clock["ms"][phase] > 0, (phase, clock)
    assert sum(clock["ms"].values()) < wall_ms
    # one segment a MoE layer (and the step's tail): a prediction ends none
    segmented = [sg for sg in runner._graphs.values() if not sg.whole]
    assert segmented and all(len(sg.segments) == len(om.layers) + 1 for sg in segmented)
    layers = len(om.layers)  # tap l (in segment l, before route l) predicts layer l+1; the last tap none
    assert all([len(sig) for sig in sg.signals] == [1] * (layers - 1) + [0, 0] for sg in segmented)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_online_recall_is_the_same_on_every_prediction_path(dtype, checkpoints, references):
    """inline, worker thread, worker + per-tap graphs, captured decode steps: one prediction each."""
    prompt = references["qwen3_moe"][0]
    seen = {}
    paths = {
        "inline": (dict(threaded=False), False),
        "worker": (dict(threaded=True, graphs_enabled=False), False),
        "worker+tap graphs": (dict(threaded=True), False),
        "decode graphs": (dict(), True),
        "streamed decode graphs": (dict(), "streamed"),
    }
    for name, (kw, graphs) in paths.items():
        om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, dtype, CacheBudget(fraction=0.5))
        torch.manual_seed(0)
        bank = PredictorBank(
            2, om.model.config.hidden_size, om.store.layout.num_experts, len(om.layers), hidden=32
        )
        pf = build_prefetcher(
            om, EngineConfig(policy="exact"), bank=bank.to(CUDA, dtype).eval(), manifest={}, **kw
        )
        runner = ModelRunner(om, graphs=bool(graphs), host_reads=graphs == "streamed")
        runner.greedy(prompt, NEW)
        torch.cuda.synchronize()
        runner.after_step()
        pf.remove()
        c = om.counters.totals()
        seen[name] = (c["routed_scored"], c["predicted_routed"])
    assert len(set(seen.values())) == 1, seen


def test_batched_graphs_match_eager_rows(checkpoints):
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (6, 13, 9)]
    outs = {}
    for graphs in (True, False):
        om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=0.5))
        runner = ModelRunner(om, rows=4, graphs=graphs)
        pos, toks = [], []
        for row, p in enumerate(prompts):
            toks.append([int(torch.argmax(runner.prefill(row, p)))])
            pos.append(len(p))
        for _ in range(NEW):
            logits = runner.decode([t[-1] for t in toks], pos)
            for i in range(3):
                toks[i].append(int(torch.argmax(logits[i])))
                pos[i] += 1
        assert runner.graph_failure is None
        outs[graphs] = toks
    assert outs[True] == outs[False]


def test_steps_switch_between_streamed_and_segmented(checkpoints, references):
    """Streamed while few experts miss, segmented when many do, and back: the tokens never change."""
    prompt = references["qwen3_moe"][0]
    om = load_checkpoint(checkpoints["qwen3_moe"], CUDA, torch.float32, CacheBudget(fraction=0.5))
    runner = ModelRunner(om, host_reads=True)
    logits, pos, tokens = runner.prefill(0, prompt), len(prompt), []
    for i in range(24):
        # always streamed; then any missed byte switches to segmented; then back under a huge limit
        runner.stream_miss_limit = None if i < 8 else 1 if i < 16 else 10**15
        tokens.append(int(torch.argmax(logits)))
        logits = runner.decode([tokens[-1]], [pos])[0]
        pos += 1
    torch.cuda.synchronize()
    runner.after_step()
    assert runner.graph_failure is None
    assert tokens == greedy_reference(checkpoints["qwen3_moe"], prompt, 24, device="cuda")
    assert runner.steps["streamed"] >= 12 and runner.steps["graph"] - runner.steps["streamed"] >= 4, (
        runner.steps
    )
    check_counts(om)


@pytest.mark.parametrize("fraction", [0.5, 0.1], ids=["cache50", "cache10"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_misses_give_the_reference_tokens(family, fraction, checkpoints, references):
    """MOE_HYBRID_MISSES in segmented graph steps: the host computes every miss it may (the rates say so),
    the device the rest with the host's pairs redirected at weight zero; same tokens as the reference."""
    from engine.experts.host_experts import HostExperts, HybridRates
    from engine.model.offload import _expert_mlp, host_experts

    prompt = references[family][0]
    om = load_checkpoint(checkpoints[family], CUDA, torch.float32, CacheBudget(fraction=fraction))
    measured = host_experts(om.store, om.layers, int(om.model.config.hidden_size), CUDA)
    assert measured.rates.copy_ms > 0 and measured.rates.host_ms > 0
    hybrid = HostExperts(om.store, HybridRates(copy_ms=1.0, host_ms=1e-4), _expert_mlp)
    runner = ModelRunner(om, rows=2, host_reads=False, hybrid=hybrid)
    tokens = runner.greedy(prompt, NEW)
    torch.cuda.synchronize()
    runner.after_step()
    assert runner.graph_failure is None
    if fraction >= 0.5:  # a segmented step needs room for a layer's experts at once
        assert runner.steps["segmented"] >= NEW - 3
    assert tokens == reference(checkpoints[family], prompt)
    c = check_counts(om)
    assert c["host_computed"] > 0
    assert c["bytes_demand"] == (c["misses"] - c["host_computed"]) * om.store.layout.nbytes
