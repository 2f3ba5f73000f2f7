"""The simulator's per-layer clock (`predictors.sim_timeline`) on hand-made events, its fit, and the events a
replay records (they add up to the replay's counters)."""

from __future__ import annotations

import pytest

from predictors.sim_policies import PolicyRun
from predictors.sim_timeline import Coding, Timeline, fit_decision_ms, timeline_ms
from predictors.simulate import replay
from tests.sim_workloads import random_workload

EB = 10_000_000  # bytes per expert: 0.2 ms at 50 GB/s
TL = Timeline(step_ms=2.0, bandwidth_gbs=50.0, decision_ms=0.1, attention_share=0.5)  # 1 ms per layer


def test_no_copies_is_the_resident_step_plus_the_decisions():
    events = [(0, 0, -1, 0, 0), (0, 1, -1, 0, 0)]
    assert timeline_ms(events, 1, 2, EB, TL) == pytest.approx(2.0 + 2 * 0.1)


def test_demand_copies_wait_for_the_decision_and_stall_the_experts():
    # layer 0: attention 0.5 + decision 0.1, two copies 0.4, experts 0.5; layer 1: 0.5 + 0.1 + 0.5
    events = [(0, 0, -1, 0, 2), (0, 1, -1, 0, 0)]
    assert timeline_ms(events, 1, 2, EB, TL) == pytest.approx(0.6 + 0.4 + 0.5 + 1.1)


def test_a_prediction_one_layer_ahead_hides_its_copies_behind_the_layer_before():
    # layer 0's tap (decision 0.1) queues layer 1's two copies (0.4, landing at 0.5) while layer 0 runs
    # (0.1 + 0.6 + 0.5 = 1.2); layer 1 has no tap: 0.6 more, its experts need nothing new: 0.5
    ahead = [(0, 0, 1, 2, 0), (0, 1, -1, 0, 0)]
    late = [(0, 0, -1, 0, 0), (0, 1, -1, 0, 2)]  # the same copies demanded by layer 1's router
    assert timeline_ms(ahead, 1, 2, EB, TL) == pytest.approx(1.2 + 1.1)
    assert timeline_ms(late, 1, 2, EB, TL) == pytest.approx(1.1 + 0.6 + 0.4 + 0.5)
    # copies longer than a layer still bound the time: the copy engine runs back to back
    big = [(0, 0, 1, 20, 0), (0, 1, -1, 0, 0)]
    assert timeline_ms(big, 1, 2, EB, TL) == pytest.approx(0.1 + 4.0 + 0.5)


def test_lookahead_copies_after_the_demand_copies_no_longer_delay_the_layer_that_misses():
    first = Timeline(**{**TL.__dict__, "demand_first": True})
    # layer 0's tap (at 0.1) queues 20 copies for layer 1 (4.0 ms) and layer 0's router (at 0.7) misses one
    events = [(0, 0, 1, 20, 1), (0, 1, -1, 0, 0)]
    # in tap order the miss queues behind them: it lands at 4.1 + 0.2, layer 0's experts end at 4.8, layer 1
    # adds its attention and decision (0.6) and experts (0.5)
    assert timeline_ms(events, 1, 2, EB, TL) == pytest.approx(4.8 + 1.1)
    # demand first: the miss lands at 0.9, layer 0's experts end at 1.4; the lookahead copies run 0.9-4.9,
    # and layer 1's experts start when they land: 5.4, half a millisecond sooner for the same copies
    assert timeline_ms(events, 1, 2, EB, first) == pytest.approx(4.9 + 0.5)
    # short lookahead copies (0.4 ms) hide behind layer 0 either way: no change
    short = [(0, 0, 1, 2, 1), (0, 1, -1, 0, 0)]
    assert timeline_ms(short, 1, 2, EB, first) == pytest.approx(timeline_ms(short, 1, 2, EB, TL)) == 2.5
    # a same-layer tap (target == layer) keeps its place ahead of the demand
    same = [(0, 0, 0, 2, 1), (0, 1, -1, 0, 0)]
    assert timeline_ms(same, 1, 2, EB, first) == pytest.approx(timeline_ms(same, 1, 2, EB, TL))


def test_hybrid_misses_compute_part_of_the_demand_on_the_host_while_the_rest_copy():
    # layer 0 (top-4) misses 3 experts: copies take 0.2 each, the host 0.3 each. The engine's rule gives the
    # host one (max(2 x 0.2, 0.3) = 0.4 < 0.6), a second would make it 0.6: experts start at 0.6 + 0.4
    events = [(0, 0, -1, 0, 3), (0, 1, -1, 0, 0)]
    hybrid = Timeline(**{**TL.__dict__, "host_ms": 0.3})
    assert timeline_ms(events, 1, 2, EB, TL, top_k=4) == pytest.approx(0.6 + 0.6 + 0.5 + 1.1)
    assert timeline_ms(events, 1, 2, EB, hybrid, top_k=4) == pytest.approx(0.6 + 0.4 + 0.5 + 1.1)
    # a slow host takes nothing; top-1 keeps its one routed expert on the device
    slow = Timeline(**{**TL.__dict__, "host_ms": 5.0})
    assert timeline_ms(events, 1, 2, EB, slow, top_k=4) == timeline_ms(events, 1, 2, EB, TL, top_k=4)
    one = [(0, 0, -1, 0, 1), (0, 1, -1, 0, 0)]
    assert timeline_ms(one, 1, 2, EB, hybrid, top_k=1) == timeline_ms(one, 1, 2, EB, TL, top_k=1)


def _coded(**kw) -> Timeline:
    coding = Coding(**{"copy_share": 0.5, "decode_base_ms": 0.05, "decode_per_expert_ms": 0.01,
                       "host_extra_ms": 0.0, **kw})  # fmt: skip
    return Timeline(**{**TL.__dict__, "coding": coding})


def test_coded_demand_copies_are_shorter_and_the_experts_wait_for_their_batch_decode():
    # layer 0 misses 2 experts: codes 0.1 ms each (0.6-0.8), one decode launch of 2 (0.05 + 0.02) ends at 0.87
    events = [(0, 0, -1, 0, 2), (0, 1, -1, 0, 0)]
    assert timeline_ms(events, 1, 2, EB, _coded()) == pytest.approx(0.87 + 0.5 + 1.1)
    assert timeline_ms(events, 1, 2, EB, TL) == pytest.approx(1.0 + 0.5 + 1.1)  # plain: 0.4 of copies
    # the host's extra time per coded copy delays the experts' launch past the copies' end
    assert timeline_ms(events, 1, 2, EB, _coded(host_extra_ms=0.2)) == pytest.approx(0.6 + 0.4 + 0.5 + 1.1)


def test_coded_copies_past_the_staging_rows_wait_for_a_decode_to_free_a_row():
    # 6 demand codes, 4 staging rows: codes 1-4 copy 0.6-1.0, are decoded when the fifth needs a row
    # (1.0-1.09); codes 5-6 then copy 1.09-1.29 and decode 1.29-1.36; the experts start at 1.36
    events = [(0, 0, -1, 0, 6), (0, 1, -1, 0, 0)]
    four = _coded(staging=4, batch=4)
    assert timeline_ms(events, 1, 2, EB, four) == pytest.approx(1.36 + 0.5 + 1.1)
    # eight rows: one copy run (0.6-1.2) and one launch of 6 (0.11): 1.31
    assert timeline_ms(events, 1, 2, EB, _coded(staging=8)) == pytest.approx(1.31 + 0.5 + 1.1)
    # two launches of up to 4 codes a flush of 6 (group 4): 0.05 x 2 + 0.06 after the last copy
    assert timeline_ms(events, 1, 2, EB, _coded(staging=8, group=4)) == pytest.approx(1.36 + 0.5 + 1.1)


def test_coded_lookahead_copies_decode_behind_the_layer_before():
    # layer 0's tap at 0.1 queues layer 1's 2 codes: 0.1-0.3, decoded by 0.37, long before layer 1 needs them
    ahead = [(0, 0, 1, 2, 0), (0, 1, -1, 0, 0)]
    assert timeline_ms(ahead, 1, 2, EB, _coded()) == pytest.approx(timeline_ms(ahead, 1, 2, EB, TL)) == 2.3
    # 20 codes (2.0 ms) bound layer 1 instead, plus the decodes of the last staging batch (4 codes: 0.09)
    big = [(0, 0, 1, 20, 0), (0, 1, -1, 0, 0)]
    rows4 = _coded(staging=4, batch=4)
    # each batch of 4: copies 0.4 ms, then a decode of 0.09 that the next batch's copies wait for
    assert timeline_ms(big, 1, 2, EB, rows4) == pytest.approx(0.1 + 5 * 0.4 + 4 * 0.09 + 0.09 + 0.5)
    # double-buffered rows (8 rows, batches of 4): a batch copies while the one before decodes
    double = _coded(staging=8, batch=4)
    assert timeline_ms(big, 1, 2, EB, double) == pytest.approx(0.1 + 5 * 0.4 + 0.09 + 0.5)


def test_the_fit_recovers_the_decision_time_and_refuses_what_no_decision_reaches():
    events = [(s, layer, -1, 0, s % 3) for s in range(20) for layer in range(4)]
    truth = Timeline(step_ms=2.0, bandwidth_gbs=50.0, decision_ms=0.237)
    measured = timeline_ms(events, 20, 4, EB, truth)
    got = fit_decision_ms(events, 20, 4, EB, Timeline(2.0, 50.0), measured)
    assert got == pytest.approx(0.237, abs=1e-6)
    assert fit_decision_ms(events, 20, 4, EB, Timeline(2.0, 50.0), 0.5) is None  # faster than any model


def test_a_trained_taps_predictor_delays_each_tap_boundary():
    ahead = [(0, 0, 1, 2, 0), (0, 1, -1, 0, 0)]  # one tap: 0.03 ms later
    predicting = Timeline(**{**TL.__dict__, "predict_ms": 0.03})
    assert timeline_ms(ahead, 1, 2, EB, predicting) == pytest.approx(timeline_ms(ahead, 1, 2, EB, TL) + 0.03)
    none = [(0, 0, -1, 0, 2), (0, 1, -1, 0, 0)]  # no tap, no predictor
    assert timeline_ms(none, 1, 2, EB, predicting) == pytest.approx(timeline_ms(none, 1, 2, EB, TL))


def test_a_replay_records_events_that_add_up_to_its_counters():
    w = random_workload(3)
    for run in (
        PolicyRun("none", "none"),
        PolicyRun("oracle", "oracle"),
        PolicyRun("oracle", "oracle+1", shift=1),
    ):
        events: list = []
        c = replay(w, 12, "lru", run, events=events)
        assert len(events) == w.steps * w.num_layers
        assert sum(e[4] for e in events) == sum(c.misses)
        assert sum(e[3] for e in events) == sum(c.prefetch_issued)
        taps = {e[1] for e in events if e[2] >= 0}
        assert taps == (set() if run.name == "none" else set(range(w.num_layers - run.shift)))
        assert all(e[2] == e[1] + run.shift for e in events if e[2] >= 0)
