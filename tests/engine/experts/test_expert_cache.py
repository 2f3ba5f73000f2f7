"""Unit tests of the expert cache: LRU and LFU order, pins, capacity smaller than a layer's need, accounting."""

from __future__ import annotations

import pytest
import torch

from engine.experts.cache import ExpertCache
from engine.experts.eviction import build_eviction
from engine.experts.slots import HIT, MISS, PREFETCH_HIT, CacheFull, slots_for_budget
from tests.caches import E, make_cache


def resident(cache: ExpertCache) -> list[tuple[int, int]]:
    return cache.resident_keys()


def test_slot_contents_are_the_right_expert():
    cache = make_cache(3)
    acq = cache.acquire(1, [4, 2])
    for e, slot in zip(acq.ids, acq.slots, strict=True):
        assert torch.all(cache.pool[slot] == 100 + e)
        assert torch.equal(cache.weights["down_proj"][slot], cache.store.expert_tensors(1, e)["down_proj"])
    cache.release(acq)


def test_lru_evicts_least_recently_used():
    cache = make_cache(3)
    for e in (0, 1, 2):
        cache.release(cache.acquire(0, [e]))
    cache.release(cache.acquire(0, [0]))  # 0 becomes most recent; 1 is now the oldest
    cache.release(cache.acquire(0, [3]))
    assert resident(cache) == [(0, 2), (0, 0), (0, 3)]
    cache.release(cache.acquire(0, [4]))
    assert (0, 2) not in resident(cache)


def _route(cache: ExpertCache, layer: int, ids: list[int]) -> None:
    """One layer-step as the offloaded forward runs it: account the routing (the clock ticks), acquire, release."""
    cache.account_routing(layer, ids)
    cache.release(cache.acquire(layer, ids))


def test_lfu_keeps_the_often_used_expert_that_lru_evicts():
    trace = [0, 0, 0, 1, 2, 3]  # 0 is used three times, then 1, 2 are the most recent when 3 arrives
    for name, evicted in (("lru", (0, 0)), ("lfu", (0, 1))):
        cache = make_cache(3, build_eviction(name, num_layers=1, lfu_half_life=0.0))
        for e in trace:
            _route(cache, 0, [e])
        assert evicted not in resident(cache) and len(resident(cache)) == 3, name
    lfu = make_cache(3, build_eviction("lfu", num_layers=1, lfu_half_life=0.0))
    for e in trace:
        _route(lfu, 0, [e])
    assert resident(lfu)[0] != (0, 0) and (0, 0) in resident(lfu)  # next victim first: not the busy one


def test_lfu_decay_lets_a_burst_of_old_uses_go():
    """0 is used three times, then 1 once; 2 arrives. With a half-life of 1 token 0's uses weigh
    1 + 2 + 4 against 1's 8 (in units of the first tick), so 0 goes; with plain counts (3 against 1) 1 goes."""
    for half_life, kept in ((1.0, (0, 1)), (0.0, (0, 0))):
        cache = make_cache(2, build_eviction("lfu", num_layers=1, lfu_half_life=half_life))
        for e in [0, 0, 0, 1, 2]:
            _route(cache, 0, [e])
        assert set(resident(cache)) == {kept, (0, 2)}, half_life


def test_an_unknown_eviction_is_refused():
    with pytest.raises(ValueError, match="lru, lfu"):
        build_eviction("mru", num_layers=2)


def test_pinned_entries_are_never_evicted():
    cache = make_cache(3)
    held = cache.acquire(0, [0, 1])  # pinned until released
    for e in (2, 3, 4, 5):
        cache.release(cache.acquire(1, [e]))
        assert cache.resident(0, 0) and cache.resident(0, 1)
    with pytest.raises(CacheFull):
        cache.acquire(1, [0, 1])  # only one unpinned slot
    assert cache.pinned_slots() == 2  # the failed acquire left no pins behind
    cache.release(held)
    assert cache.pinned_slots() == 0


def test_prefetch_classification_and_accounting():
    cache = make_cache(4)
    cache.release(cache.acquire(0, [5]))  # 5 resident from an earlier step
    assert cache.prefetch(0, [1, 2, 5]) == 2  # 5 is already there: pinned, not copied
    cache.account_routing(0, [1, 5, 3])
    acq = cache.acquire(0, [1, 5, 3])
    assert acq.kinds == [PREFETCH_HIT, HIT, MISS]
    cache.release(acq)
    c = cache.counters
    assert (c.prefetch_issued[0], c.prefetch_used[0], c.prefetch_wasted[0]) == (2, 1, 1)  # 2 was never routed
    assert (c.hits_prefetched[0], c.hits_resident[0], c.misses[0], c.requests[0]) == (
        1,
        1,
        2,
        4,
    )  # 5 missed once before
    assert (c.predicted_routed[0], c.routed_scored[0]) == (2, 3)  # recall 2/3: 1 and 5 predicted, 3 not
    assert c.bytes_prefetch == 2 * cache.layout.nbytes and c.bytes_demand == 2 * cache.layout.nbytes
    assert cache.pinned_slots() == 0


def test_a_prefetched_expert_evicted_before_use_is_wasted():
    cache = make_cache(2)
    cache.prefetch(0, [0, 1])
    cache.account_routing(0, [])  # nothing routed: both unpinned and counted wasted once
    assert cache.counters.prefetch_wasted[0] == 2
    cache.release(cache.acquire(1, [0, 1]))  # evicts them; no double counting
    assert cache.counters.prefetch_wasted[0] == 2


def test_prefetch_stops_when_every_slot_is_pinned():
    cache = make_cache(2)
    held = cache.acquire(1, [0])
    assert cache.prefetch(0, [1, 2, 3]) == 1  # one free slot: one copy, the rest dropped
    cache.account_routing(0, [1])
    cache.release(cache.acquire(0, [1]))
    cache.release(held)
    assert cache.pinned_slots() == 0


def test_slots_for_budget():
    assert slots_for_budget(100, 10, min_slots=8, fraction=0.25) == 25
    assert slots_for_budget(100, 10, min_slots=8, fraction=0.01) == 8
    assert slots_for_budget(100, 10**9, min_slots=2, gigabytes=5.5) == 5
    assert slots_for_budget(100, 10, min_slots=2, gigabytes=1e6) == 100
    assert slots_for_budget(100, 10, min_slots=2, free_bytes=305) == 30


def test_ready_on_device_only_when_resident_and_the_slot_table_is_current():
    cache = make_cache(3)
    assert not cache.ready_on_device(0, [1])  # not resident
    cache.release(cache.acquire(0, [1, 2]))
    assert not cache.ready_on_device(0, [1, 2])  # resident, but the device row was never sent
    cache.sync_slot_table(0)
    assert cache.ready_on_device(0, [1, 2])
    assert not cache.ready_on_device(0, [1, 3])  # 3 must be loaded: the host decides
    cache.release(cache.acquire(1, [0, 4]))  # evicts one of layer 0's experts: layer 0's row is stale
    assert not cache.ready_on_device(0, [1, 2])


def test_streamed_steps_fill_behind_and_publish_only_landed_copies():
    """A streamed step's misses are read from host memory: the host counts them after the step, queues
    them, and the next publish copies them in; their table entries stay -1 until then."""
    cache = make_cache(3)
    nbytes = cache.layout.nbytes
    misses = cache.stream_account(0, [1, 4], [-1, -1], predicted={4, 5})
    assert misses == [1, 4]
    c = cache.counters.totals()
    assert (c["misses"], c["requests"], c["bytes_host_read"]) == (2, 2, 2 * nbytes)
    assert (c["routed_scored"], c["predicted_routed"]) == (2, 1)
    cache.stream_queue(0, misses)
    cache.stream_queue(0, [4, 5], prefetch=True)  # 4 is queued already: only 5 is a prefetch
    assert cache.slot_dev[0].tolist() == [-1] * E  # nothing visible before a publish
    assert cache.stream_publish() == 3
    c = cache.counters.totals()
    assert (c["prefetch_issued"], c["bytes_fill"], c["bytes_prefetch"]) == (1, 2 * nbytes, nbytes)
    # the copies ran (synchronously on the CPU) but only the next publish shows them
    assert cache.slot_dev[0].tolist() == [-1] * E
    assert cache.stream_publish() == 0
    table = cache.slot_dev[0].tolist()
    for e in (1, 4, 5):
        assert table[e] >= 0 and torch.all(cache.pool[table[e]] == e)
    assert [e for e in range(E) if table[e] < 0] == [0, 2, 3]
    # the next step found 4 and 5 in their slots: a resident hit and a prefetch hit
    assert cache.stream_account(0, [4, 5], [table[4], table[5]], predicted=None) == []
    c = cache.counters.totals()
    assert (c["hits_resident"], c["hits_prefetched"], c["prefetch_used"]) == (1, 1, 1)
    # a fourth expert evicts the least recently used (1): its entry goes -1 in the same publish
    cache.stream_queue(0, [2])
    assert cache.stream_publish() == 1
    assert cache.slot_dev[0, 1] == -1 and cache.slot_dev[0, 2] == -1  # 2 is landing, not visible
    cache.stream_publish()
    assert cache.slot_dev[0, 2] >= 0 and torch.all(cache.pool[int(cache.slot_dev[0, 2])] == 2)


def test_streamed_fills_stop_at_the_bytes_in_flight():
    cache = make_cache(3)
    cache.stream_queue(1, [0, 1, 2])
    assert cache.stream_publish(max_inflight_bytes=2 * cache.layout.nbytes) == 2  # the third is dropped
    assert cache.stream_publish(max_inflight_bytes=0) == 0  # nothing queued, two landed
    cache.stream_queue(1, [3])
    assert cache.stream_publish(max_inflight_bytes=0) == 1  # one at least when none is in flight
