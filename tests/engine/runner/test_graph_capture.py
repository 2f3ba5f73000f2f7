"""`GraphCapture.on_prediction` on the CPU (the capture itself stubbed): where a prefetch tap's predictor
runs in each kind of captured step. On a GPU, the decode-graph tests run the same paths for real,
`MOE_PREDICTOR_OVERLAP`'s side branch included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.runner.capture import GraphCapture
from engine.runner.host_buffers import HostArena


class _Select:
    """A tap's predictor: counts its calls, returns its id table."""

    def __init__(self) -> None:
        self.calls = 0
        self.table = torch.tensor([[3, 1]])

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.table


def test_a_resident_whole_step_skips_the_predictor(fake_cuda_graph):
    cap = GraphCapture(None, whole=True, layers=3, branch_predictions=True)
    select, tap = _Select(), object()
    cap.on_prediction(tap, 1, select, torch.zeros(1, 4))
    cap.close()
    assert select.calls == 0 and cap.predictors == {} and cap.logs == {}
    assert not cap.branch  # nothing to overlap: no side stream either


def test_a_streamed_step_logs_each_prediction(fake_cuda_graph):
    cap = GraphCapture(None, whole=True, layers=3, host_views=lambda layer: {})
    select, tap = _Select(), object()
    cap.on_prediction(tap, 2, select, torch.zeros(1, 4))
    cap.on_prediction(tap, 1, None)  # a replayed routing (oracle): the ids are known on the host
    cap.close()
    assert select.calls == 1 and cap.predictors == {2: tap, 1: tap}
    assert cap.logs["pred"].shape == (3, 1, 2) and cap.logs["pred"][2].tolist() == [[3, 1]]
    assert len(cap.segments) == 1  # one graph for the step


def test_a_segmented_step_signals_a_prediction_inside_its_segment(fake_cuda_graph):
    """A segmented step's tap ends no segment: the segment copies its table to the arena right after the
    tap and records an external event there; the route ends the segment, its ids copied out as its last
    node; the prediction belongs to that segment's signals."""
    cap = GraphCapture(None, whole=False, layers=3, branch_predictions=True, arena=_arena())
    select, tap = _Select(), object()
    cap.on_prediction(tap, 1, select, torch.zeros(1, 4))
    cap.on_prediction(tap, 2, None)  # a replayed routing (oracle): nothing to copy, an event still
    assert cap.segments == []  # still the first segment
    ids = torch.tensor([[2, 0]])
    cap.on_routing(0, ids)
    cap.close()
    assert not cap.branch  # the host reads the table mid-segment: in line
    (_, action), (_, last) = cap.segments
    assert action.layer == 0 and action.dev is ids and action.rows.tolist() == [[2, 0]] and last is None
    (pred, oracle), after = cap.signals
    assert after == []
    assert pred.layer == 1 and pred.issuer is tap and pred.dev is select.table
    assert pred.rows.tolist() == [[3, 1]] and pred.done.external and pred.done.records == 1
    assert oracle.layer == 2 and oracle.host is None and oracle.rows is None
    assert oracle.done.external and oracle.done is not pred.done  # waited for all the same
    # the buffers are views of the arena's block, in capture order, and the next capture reuses them
    assert pred.host.data_ptr() < action.host.data_ptr()
    again = GraphCapture(None, whole=False, layers=3, arena=cap.arena)
    again.on_routing(0, ids)
    assert again.segments[0][1].host.data_ptr() == pred.host.data_ptr()


def test_a_segmented_capture_needs_an_arena_and_refuses_a_step_wider_than_it(fake_cuda_graph):
    with pytest.raises(ValueError, match="host arena"):
        GraphCapture(None, whole=False, layers=3)
    cap = GraphCapture(None, whole=False, layers=1, arena=HostArena(64, pinned=False))
    with pytest.raises(MemoryError, match="host arena"):
        cap.on_routing(0, torch.zeros((8, 2), dtype=torch.long))  # 128 bytes


def _arena() -> HostArena:
    return HostArena.sized(3, rows=1, experts=4, top_k=2, pinned=False)


class _Log:
    """Records the order of the replayer's calls that matter for the slot table's uploads."""

    def __init__(self) -> None:
        self.calls: list[str] = []


class _Waited:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        self.log.calls.append(f"wait {self.name}")


class _Graph:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def replay(self) -> None:
        self.log.calls.append(f"launch {self.name}")


class _Cache:
    device = torch.device("cpu")

    def __init__(self, log: _Log) -> None:
        self.log = log

    def release(self, acq) -> None:
        pass

    def ready_on_device(self, layer, experts) -> bool:
        return False

    def account_routing(self, layer, experts) -> None:
        pass

    def acquire(self, layer, experts):
        self.log.calls.append(f"acquire {layer}")
        return object()

    def sync_slot_table(self, layer) -> None:
        self.log.calls.append(f"upload {layer}")


class _Tap:
    def __init__(self, log: _Log) -> None:
        self.log = log

    def issue_captured(self, target, host, rows, t0) -> None:
        self.log.calls.append(f"issue {target} {'oracle' if host is None else host[:rows].tolist()}")


def test_every_prediction_is_issued_only_once_its_segment_is_past_the_tap(monkeypatch):
    """The replayer waits for a prediction's event (the segment is past the tap, so past every slot-table
    upload queued before it) before it issues the copies, an oracle's too, whose ids need no copy: a copy
    issued earlier may evict an expert that an upload still queued would then show as gone."""
    from engine.runner.graphs import Action, GraphReplayer, Prediction, StepGraph

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    log, ids = _Log(), torch.tensor([[1, 2]])
    tap = _Tap(log)
    route = [Action(layer, ids, ids, ids.numpy()) for layer in range(2)]
    trained = Prediction(1, tap, ids, torch.tensor([[2, 3]]), np.array([[2, 3]]), _Waited(log, "tap 0"))
    oracle = Prediction(2, tap, done=_Waited(log, "tap 1"))
    sg = StepGraph(1, 64, ids, ids[0])
    sg.segments = [(_Graph(log, "0"), route[0]), (_Graph(log, "1"), route[1]), (_Graph(log, "2"), None)]
    sg.signals = [[trained], [oracle], []]
    sg.events = [_Waited(log, f"route {i}") for i in range(3)]
    GraphReplayer(_Cache(log)).replay(sg, 1)
    assert log.calls == [
        "launch 0", "wait tap 0", "issue 1 [[2, 3]]", "wait route 0", "acquire 0", "upload 0",
        "launch 1", "wait tap 1", "issue 2 oracle", "wait route 1", "acquire 1", "upload 1",
        "launch 2",
    ]  # fmt: skip
