"""`GraphCapture.on_prediction` on the CPU (the capture itself stubbed): where a prefetch tap's predictor
runs in each kind of captured step. On a GPU, the decode-graph tests run the same paths for real,
`MOE_PREDICTOR_OVERLAP`'s side branch included."""

from __future__ import annotations

import torch

from engine.runner.capture import GraphCapture


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


def test_a_segmented_step_ends_a_segment_at_each_prediction(fake_cuda_graph):
    cap = GraphCapture(None, whole=False, layers=3, branch_predictions=True)
    select, tap = _Select(), object()
    cap.on_prediction(tap, 1, select, torch.zeros(1, 4))
    cap.close()
    assert not cap.branch  # the host reads the table at the segment's end: in line
    (_, action), (_, last) = cap.segments
    assert action.kind == "predict" and action.layer == 1 and action.dev is select.table
    assert action.issuer is tap and last is None
