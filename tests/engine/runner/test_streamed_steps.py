"""The host side of streamed decode steps, on the CPU: how a step's logs become counters and queued fills,
and the choice between streamed and segmented steps. (The steps themselves need a GPU:
`test_decode_graphs_gpu.py`.)"""

from __future__ import annotations

import torch

from engine.prefetch.policies import TopK
from engine.prefetch.prefetcher import Prefetcher
from engine.runner.graphs import GraphReplayer, StepGraph
from engine.runner.step_choice import StreamChoice
from tests.caches import make_cache


def logs(route: list, slots: list, pred: list | None = None) -> dict[str, torch.Tensor]:
    """Pinned-copy stand-ins: route [L, B, k] ids, slots [L, B*k], pred [L, B, W]."""
    out = {"route": torch.tensor(route), "slots": torch.tensor(slots, dtype=torch.int32)}
    if pred is not None:
        out["pred"] = torch.tensor(pred)
    return out


def step_graph(predictors: dict | None = None) -> StepGraph:
    return StepGraph(
        1, 64, ids=torch.zeros(2, 1), pos=torch.zeros(2), stream=True, predictors=predictors or {}
    )


def test_a_streamed_steps_logs_become_counters_and_fills():
    cache = make_cache(4)
    issuer = Prefetcher([], cache, TopK("exact", 2, 6), scorer=lambda layer, x: x)  # never installed
    # layer 0: rows 0 and 1 routed {1, 4} and {4, 5}; expert 4 had slot 2, the others were read from host.
    # layer 1: {0, 3} and {3, 0}, all from host; predictions for layer 1 only: [3, 2] in both rows
    step = logs(
        route=[[[1, 4], [4, 5]], [[0, 3], [3, 0]]],
        slots=[[-1, 2, 2, -1], [-1, -1, -1, -1]],
        pred=[[[0, 0], [0, 0]], [[3, 2], [3, 2]]],
    )
    GraphReplayer(cache).account_streamed_step(step_graph({1: issuer}), step, n=2)
    c = cache.counters
    assert c.requests == [3, 2] and c.misses == [2, 2] and c.hits_resident == [1, 0]
    assert c.bytes_host_read == 4 * cache.layout.nbytes
    assert (c.routed_scored, c.predicted_routed) == ([0, 2], [0, 1])  # layer 1's prediction caught 3
    assert issuer.predictions == 1
    # misses first (layer 0, then 1), then layer 1's predicted 2 (3 is queued as a miss already)
    assert cache.fills.queued == {(0, 1): False, (0, 5): False, (1, 0): False, (1, 3): False, (1, 2): True}
    assert cache.stream_publish() == 4  # four slots: the prediction did not fit
    assert c.prefetch_issued == [0, 0] and c.bytes_fill == 4 * cache.layout.nbytes


def test_only_the_real_rows_of_a_padded_step_count():
    cache = make_cache(4)
    step = logs(route=[[[1, 2], [3, 4]], [[0, 1], [2, 3]]], slots=[[-1] * 4, [-1] * 4])
    GraphReplayer(cache).account_streamed_step(step_graph(), step, n=1)
    assert cache.counters.requests == [2, 2] and cache.counters.routed_scored == [0, 0]
    assert sorted(cache.fills.queued) == [(0, 1), (0, 2), (1, 0), (1, 1)]


def test_the_choice_switches_with_hysteresis():
    choice = StreamChoice(limit=100)
    assert choice.update(0) and choice.update(400)  # average 80: still streamed
    assert not choice.update(400)  # 144 > 100: segmented
    for _ in range(4):
        assert not choice.update(0)  # 115, 92, 74, 59: above half the limit, stays segmented
    assert choice.update(0)  # 47 < 50: streamed again
    assert choice.update(90)  # 56: between half and the limit, stays streamed


def test_an_expert_made_resident_after_it_was_queued_is_not_filled_again():
    """A streamed step's miss is queued; before the next publish a prefill (or an eager step) acquires the
    same expert. The publish must not give it a second slot: the first would be orphaned (neither free nor
    evictable) and, one leak at a time, acquires would fail with every slot free of pins (GPU serving)."""
    cache = make_cache(4)
    for _ in range(8):
        cache.stream_queue(0, [1, 2])
        cache.release(cache.acquire(0, [1, 2, 3]))  # a prefill makes them resident meanwhile
        cache.stream_publish()
        assert len(cache.resident_keys()) == cache.counters.slots_used <= cache.capacity
        assert sorted(set(cache._slots.slot_of.values())) == sorted(
            cache._slots.slot_of.values()
        )  # one slot each
    cache.release(cache.acquire(1, [0, 1, 2, 3]))  # every slot can still be taken at once


def test_lookahead_predictions_wait_for_the_routed_layers_demand_when_asked():
    """MOE_LOOKAHEAD_AFTER_DEMAND (`GraphReplayer`'s `after_demand`): at layer 3's route, a same-layer
    prediction is issued before its demand copies and a lookahead one (for layer 4 or 5) after them; off,
    every pending prediction goes first, in tap order."""
    from types import SimpleNamespace

    from engine.runner.graphs import split_predictions

    same, ahead1, ahead2 = ((SimpleNamespace(layer=t), None, 0.0) for t in (3, 4, 5))
    pending = [ahead2, same, ahead1]
    assert split_predictions(pending, 3, False) == (pending, [])
    assert split_predictions(pending, 3, True) == ([same], [ahead2, ahead1])
    assert split_predictions([], 3, True) == ([], [])
