"""The pre-attention tap and the prefetch policies (CPU).

- outputs equal the unmodified transformers model under every policy, for every family;
- `oracle` with a cache that holds a layer's experts never misses;
- with `none`, hit and miss counts equal an LRU simulation of the recorded routing;
- wasted prefetches are counted exactly on a hand-made trace;
- the policies' selections on hand-made scores.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from families import FAMILIES
from torch import nn

from engine.api.config import EngineConfig
from engine.api.errors import EngineError
from engine.api.policies import POLICIES as ALL_POLICIES
from engine.experts.cache import ExpertCache
from engine.experts.hooks import Listener
from engine.experts.store import ExpertLayout, ExpertStore
from engine.model.fingerprint import model_fingerprint
from engine.model.loader import CacheBudget, load_checkpoint
from engine.prefetch.build import build_prefetcher
from engine.prefetch.nets import PredictorBank
from engine.prefetch.policies import Adaptive, TopK, union_best_first
from engine.prefetch.prefetcher import Prefetcher
from engine.prefetch.routing_trace import RoutingRecorder, RoutingReplay
from engine.runner.runner import ModelRunner

NEW = 16
POLICIES = tuple(p for p in ALL_POLICIES if p != "none")  # every policy that prefetches


def random_bank(om, seed: int = 0) -> PredictorBank:
    torch.manual_seed(seed)
    d = om.model.config.hidden_size
    return PredictorBank(2, d, om.store.layout.num_experts, len(om.layers), hidden=32).eval()


def record_routing(checkpoint, prompt: list[int], fraction: float) -> tuple[RoutingRecorder, list[int], str]:
    om = load_checkpoint(checkpoint, torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction))
    rec = RoutingRecorder(len(om.layers))
    om.cache.listen(Listener(route=rec.record))
    tokens = ModelRunner(om).greedy(prompt, NEW)
    return rec, tokens, model_fingerprint(om.model)


def with_policy(checkpoint, policy: str, fraction: float, tmp_path, prompt: list[int]):
    om = load_checkpoint(checkpoint, torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction))
    config = EngineConfig(policy=policy)
    if policy == "oracle":
        rec, _, fp = record_routing(checkpoint, prompt, fraction)
        path = rec.save(tmp_path / "routing.json", fp)
        config = EngineConfig(policy=policy, oracle_trace=str(path))
    bank = random_bank(om) if policy not in ("crosslayer", "oracle") else None
    pf = build_prefetcher(om, config, bank=bank, manifest={"loss": "wbce"})
    return om, pf


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_identical_under_every_policy(family, policy, checkpoints, references, tmp_path):
    prompt, ref_logits, ref_tokens = references[family]
    om, pf = with_policy(checkpoints[family], policy, 0.5, tmp_path, prompt)
    with torch.no_grad():
        logits = om.model(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    if pf.replay is not None:
        pf.replay.rewind()
    assert ModelRunner(om).greedy(prompt, NEW) == ref_tokens
    c = om.counters.totals()
    assert pf.predictions > 0
    assert c["routed_scored"] > 0, "no routing was scored against a prediction"
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]
    assert c["prefetch_used"] + c["prefetch_wasted"] <= c["prefetch_issued"]
    assert c["bytes_prefetch"] == c["prefetch_issued"] * om.store.layout.nbytes
    assert om.cache.pinned_slots() == 0 or policy == "crosslayer"


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "mixtral", "gpt_oss"])
def test_oracle_never_misses_when_a_layer_fits(family, checkpoints, references, tmp_path):
    prompt, _, ref_tokens = references[family]
    probe = load_checkpoint(
        checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=1.0)
    )
    one_layer = (
        probe.store.layout.num_experts / probe.store.total_experts
    )  # the cache holds exactly E experts
    rec, tokens, fp = record_routing(checkpoints[family], prompt, one_layer)
    assert tokens == ref_tokens
    om = load_checkpoint(
        checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=one_layer)
    )
    assert om.cache.capacity == om.store.layout.num_experts
    path = rec.save(tmp_path / "routing.json", fp)
    pf = build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path)))
    assert ModelRunner(om).greedy(prompt, NEW) == ref_tokens
    c = om.counters.totals()
    assert c["misses"] == 0
    assert c["prefetch_wasted"] == 0
    assert c["predicted_routed"] == c["routed_scored"] == c["requests"]
    assert pf.replay.exhausted == 0


@pytest.mark.parametrize("ahead", [1, 2])
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe"])
def test_oracle_ahead_issues_each_layer_d_layers_early(family, ahead, checkpoints, references, tmp_path):
    """MOE_ORACLE_AHEAD=d: layer l's recorded routing is issued at layer l - d's tap. Same tokens; in decode
    steps the first d layers (no tap) miss as `none` does and every later layer finds all its experts (the
    prefill's many experts per layer may not fit beside the layers ahead's pins: not counted)."""
    prompt, _, ref_tokens = references[family]
    rec, _, fp = record_routing(checkpoints[family], prompt, 0.5)
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5))
    path = rec.save(tmp_path / "routing.json", fp)
    pf = build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path), oracle_ahead=ahead))
    assert pf.shift == ahead and len(pf._hooks) == len(om.layers) - ahead
    assert pf.limit == (om.cache.capacity - om.top_k) // ahead
    runner = ModelRunner(om)
    logits = runner.prefill(0, prompt)
    c = om.counters
    before = list(c.misses)
    tokens, pos = [], len(prompt)
    for _ in range(NEW):
        tokens.append(int(torch.argmax(logits)))
        logits = runner.decode([tokens[-1]], [pos])[0]
        pos += 1
    assert tokens == ref_tokens
    decode_misses = [m - b for m, b in zip(c.misses, before, strict=True)]
    assert sum(decode_misses[ahead:]) == 0 and sum(decode_misses[:ahead]) > 0
    assert sum(c.hits_prefetched[ahead:]) > 0 and om.cache.pinned_slots() == 0


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe"])
def test_a_lookahead_bundle_predicts_the_layer_after(family, checkpoints, references):
    """A bank trained `--distance 1` (one predictor fewer than MoE layers) runs at layers 0..L-2 for
    layers 1..L-1: the same tokens, every prediction scored, none for layer 0."""
    prompt, _, ref_tokens = references[family]
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5))
    torch.manual_seed(0)
    d, e = om.model.config.hidden_size, om.store.layout.num_experts
    bank = PredictorBank(2, d, e, len(om.layers) - 1, hidden=32).eval()
    pf = build_prefetcher(
        om, EngineConfig(policy="exact"), bank=bank, manifest={"loss": "wbce", "distance": 1}
    )
    assert pf.shift == 1 and len(pf._hooks) == len(om.layers) - 1
    assert pf.limit == om.cache.capacity - om.top_k
    assert ModelRunner(om).greedy(prompt, NEW) == ref_tokens
    c = om.counters
    assert c.routed_scored[0] == 0 and all(n > 0 for n in c.routed_scored[1:])
    with pytest.raises(EngineError, match="has 2 layers predicting 2 ahead, the model has 3 MoE layers"):
        build_prefetcher(
            om, EngineConfig(policy="exact"), bank=bank, manifest={"loss": "wbce", "distance": 2}
        )


def test_oracle_ahead_past_the_last_layer_is_refused(checkpoints, references, tmp_path):
    prompt = references["qwen3_moe"][0]
    rec, _, fp = record_routing(checkpoints["qwen3_moe"], prompt, 0.5)
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    path = rec.save(tmp_path / "routing.json", fp)
    ahead = len(om.layers)
    with pytest.raises(EngineError, match=f"MOE_ORACLE_AHEAD={ahead}: the model has {ahead} MoE layers"):
        build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path), oracle_ahead=ahead))


def lru_simulation(steps: list[tuple[int, list[int]]], capacity: int, num_layers: int):
    """Hits and misses per layer of an LRU cache that pins a step's experts while the step runs."""
    lru: OrderedDict[tuple[int, int], None] = OrderedDict()
    hits, misses = [0] * num_layers, [0] * num_layers
    for layer, routed in steps:
        step: set[tuple[int, int]] = set()
        for e in sorted(routed):
            key = (layer, e)
            if key in lru:
                hits[layer] += 1
                lru.move_to_end(key)
            else:
                misses[layer] += 1
                if len(lru) >= capacity:
                    victim = next(k for k in lru if k not in step)
                    del lru[victim]
                lru[key] = None
            step.add(key)
    return hits, misses


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "phimoe"])
def test_none_policy_counts_equal_an_lru_simulation(family, checkpoints, references):
    prompt, _, _ = references[family]
    om = load_checkpoint(checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5))
    steps: list[tuple[int, list[int]]] = []
    om.cache.listen(Listener(route=lambda layer, routed: steps.append((layer, list(routed)))))
    ModelRunner(om).greedy(prompt, NEW)
    assert max(len(r) for _, r in steps) <= om.cache.capacity  # no chunking: the simulation is exact
    hits, misses = lru_simulation(steps, om.cache.capacity, len(om.layers))
    c = om.counters
    assert c.hits_resident == hits
    assert c.misses == misses
    assert sum(c.prefetch_issued) == sum(c.hits_prefetched) == 0


# ----------------------------------------------------------------------------- hand-made trace
class Planted:
    """A scorer that gives each tap the scores of a planted prediction, in order."""

    def __init__(self, predictions: list[list[int]], num_experts: int) -> None:
        self.predictions = list(predictions)
        self.num_experts = num_experts

    def __call__(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        ids = self.predictions.pop(0)
        s = torch.zeros(x.shape[0], self.num_experts)
        s[:, ids] = torch.arange(len(ids), 0, -1, dtype=torch.float32)  # first id best
        return s


def tiny_cache(num_experts: int = 4, capacity: int = 3) -> ExpertCache:
    layout = ExpertLayout.from_shapes({"w": (2, 2)}, torch.float32, num_experts)
    store = ExpertStore(layout, num_layers=1, pin=False)
    store.allocate(0).copy_(torch.arange(num_experts * 4, dtype=torch.float32).view(num_experts, 4))
    return ExpertCache(store, capacity, torch.device("cpu"))


def test_wasted_prefetch_counted_exactly_on_a_hand_made_trace():
    # Cache of 3 slots, 4 experts, one MoE layer; each step: the tap predicts, then the router routes.
    trace = [([0, 1], [1, 2]), ([2, 3], [2, 3]), ([0], [1]), ([3, 2], [0])]
    # Worked by hand (LRU oldest first):
    #  1: copy 0,1. Routed {1,2}: 0 wasted; 1 prefetch hit; 2 miss.              LRU 0 1 2
    #  2: 2 resident (pinned, no copy); copy 3 evicting 0. Routed {2,3}: 2 hit, 3 prefetch hit.
    #  3: copy 0 evicting 1. Routed {1}: 0 wasted; 1 miss evicting 2.            LRU 3 0 1
    #  4: 3 resident (pinned); copy 2 evicting 0. Routed {0}: 3 unpinned, 2 wasted; 0 miss evicting 1.
    cache = tiny_cache()
    norm = nn.Identity()
    layers = [SimpleNamespace(index=0, input_layernorm=norm)]
    pf = Prefetcher(layers, cache, TopK("exact", 2, 4), Planted([p for p, _ in trace], 4)).install()
    for predicted, routed in trace:
        pf.policy.width = len(predicted)
        norm(torch.zeros(1, 1, 2))  # the tap
        cache.account_routing(0, routed)
        cache.release(cache.acquire(0, routed))
    c = cache.counters
    assert c.prefetch_issued == [5]  # 0,1 then 3 then 0 then 2
    assert c.prefetch_used == [2]  # 1 (step 1), 3 (step 2)
    assert c.prefetch_wasted == [3]  # 0 (step 1), 0 (step 3), 2 (step 4)
    assert c.hits_prefetched == [2] and c.hits_resident == [1] and c.misses == [3]
    assert c.predicted_routed == [3] and c.routed_scored == [6]  # recall 3/6: {1}, {2,3}, {}, {}
    assert cache.pinned_slots() == 0
    pf.remove()


# ----------------------------------------------------------------------------- policies
def test_union_best_first_orders_by_votes_then_rank():
    assert union_best_first([[5, 3, 1, 2]], counted=True) == [5, 3]
    assert union_best_first([[5, 3, 1]]) == [5, 3, 1]
    rows = [[4, 1, 9, 2], [1, 7, 9, 2], [1, 4, 0, 1]]  # last entry: how many to take
    assert union_best_first(rows, counted=True) == [
        1,
        4,
        7,
    ]  # 1: 3 votes; then 4 and 7 with one each, 4 ranked better


def test_topk_policies():
    s = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.0]])
    assert TopK("exact", 2, 5).select(s).tolist() == [[1, 3]]
    assert TopK("top1", 1, 5).select(s).tolist() == [[1]]
    assert TopK("overprovision", 9, 5).select(s).shape == (1, 5)  # never more than E


def test_adaptive_takes_the_fewest_experts_that_reach_the_target_mass():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05], [0.96, 0.01, 0.01, 0.01, 0.01]])
    pol = Adaptive(k=1, max_experts=4, target=0.75, num_experts=5, loss="mse")
    t = pol.select(probs)
    assert t[0, -1].item() == 2 and t[0, :2].tolist() == [0, 1]  # 0.5 + 0.3 >= 0.75
    assert t[1, -1].item() == 1  # one expert carries 0.96
    assert Adaptive(1, 4, 0.85, 5, "mse").select(probs)[0, -1].item() == 3  # 0.5 + 0.3 + 0.1 reaches 0.85
    assert Adaptive(1, 2, 0.99, 5, "mse").select(probs)[0, -1].item() == 2  # bounded by the max
    assert Adaptive(2, 4, 0.1, 5, "mse").select(probs)[1, -1].item() == 2  # and by k from below
    # BCE-family logits: sigmoid, then normalised.
    logits = torch.logit(torch.tensor([[0.9, 0.9, 0.05, 0.05, 0.05]]))
    assert Adaptive(1, 5, 0.8, 5, "wbce").select(logits)[0, -1].item() == 2


# ----------------------------------------------------------------------------- configuration errors
def test_predictor_policies_need_a_bundle(checkpoints):
    om = load_checkpoint(
        checkpoints["qwen3_moe"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    with pytest.raises(EngineError, match="MOE_POLICY=exact needs a predictor bundle.*MOE_PREDICTORS"):
        build_prefetcher(om, EngineConfig(policy="exact"))
    with pytest.raises(EngineError, match="MOE_POLICY=oracle needs MOE_ORACLE_TRACE"):
        build_prefetcher(om, EngineConfig(policy="oracle"))


def test_oracle_trace_of_another_model_is_refused(checkpoints, references, tmp_path):
    prompt = references["qwen3_moe"][0]
    rec, _, fp = record_routing(checkpoints["qwen3_moe"], prompt[:4], 1.0)
    path = rec.save(tmp_path / "r.json", fp)
    om = load_checkpoint(
        checkpoints["mixtral"], torch.device("cpu"), torch.float32, CacheBudget(fraction=0.5)
    )
    with pytest.raises(EngineError, match="recorded on another model"):
        build_prefetcher(om, EngineConfig(policy="oracle", oracle_trace=str(path)))
    with pytest.raises(EngineError, match="does not exist"):
        RoutingReplay.load(tmp_path / "missing.json")


def test_every_registered_policy_is_built_or_needs_no_policy_object():
    """The registry (engine.api.policies) and the builder (engine.prefetch.policies) agree on every name."""
    from engine.prefetch.policies import build_policy

    for name in ALL_POLICIES:
        if name in ("none", "oracle"):  # no ranking: plain LRU, or a recorded trace replayed
            with pytest.raises(ValueError, match="does not rank"):
                build_policy(name, 2, 8)
        else:
            assert build_policy(name, 2, 8).width >= 1
    with pytest.raises(ValueError, match="known: none, exact"):
        build_policy("lru", 2, 8)
