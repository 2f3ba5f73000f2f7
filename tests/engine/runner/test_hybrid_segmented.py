"""Hybrid misses as a segmented graph step runs them, emulated on the CPU: a capture object that, at each
layer's routing (where a captured step's route segment ends), does what `GraphReplayer` does at replay (the
ids, experts' input and weights read back, the host's share chosen, the rest acquired, the host's output
and the pair redirect written into the layer's `HybridSlot`), so the forward then applies the slot exactly
as the experts' segment of a captured step does (`engine.model.offload`) and resets it. Every family must
give transformers' greedy tokens. The GPU test of the real graphs is
`test_decode_graphs_gpu.py::test_hybrid_misses_give_the_reference_tokens`."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES

from engine.experts.host_experts import HostExperts, HybridRates
from engine.model.loader import CacheBudget, load_checkpoint
from engine.model.offload import DecodeMode, _expert_mlp, decoding
from engine.runner.graphs import Action, GraphReplayer, HybridSlot
from engine.runner.runner import ModelRunner

NEW = 16  # the references fixture's greedy length


class ReplayingCapture:
    """A StepCapture whose routing callback runs the replayer's host action at once (no graph)."""

    def __init__(self, replayer: GraphReplayer) -> None:
        self.replayer = replayer
        self.held = []
        self.slots = {}
        self.shared = 0  # layer-steps where the host took a share

    def on_routing(self, layer, top_k_index, mod=None, hidden=None, weights=None) -> dict:
        slot = self.slots.get(layer)
        if slot is None or slot.sub.shape != top_k_index.shape:
            slot = self.slots[layer] = HybridSlot(
                mod, hidden, weights, torch.empty_like(top_k_index), torch.empty_like(weights),
                torch.empty_like(hidden),
            )  # fmt: skip
            slot.host = {n: torch.empty_like(getattr(slot, n)) for n in ("x", "w", "sub", "keep", "out")}
            slot.reset()
        slot.x, slot.w = hidden, weights  # a captured step's static tensors; here this forward's
        slot.host["x"].copy_(hidden)
        slot.host["w"].copy_(weights)
        self.release(self.replayer.cache)  # the previous layer has computed, as its segment has at replay
        host = top_k_index.clone()  # what the route segment's last node copies out
        action = Action(layer, top_k_index, host, host.numpy(), hybrid=slot)
        n = top_k_index.shape[0]
        experts = sorted(set(action.rows.ravel().tolist()))
        host = self.replayer._host_share(layer, action.host)
        if host:
            self.held.append(self.replayer._route_hybrid(action, experts, host, n))
            self.shared += 1
        else:
            self.held.append(self.replayer._route(action, experts))
        return {"hybrid": slot}

    def on_prediction(self, tap, target, select, reads=None) -> None:
        raise AssertionError("no prefetch policy here")

    def release(self, cache) -> None:
        for acq in self.held:
            cache.release(acq)
        self.held.clear()


class EmulatedRunner(ModelRunner):
    """Decode steps through `ReplayingCapture`: the segmented path's host logic and in-forward math."""

    def __init__(self, om, hybrid) -> None:
        super().__init__(om, hybrid=hybrid)
        self.capture = ReplayingCapture(GraphReplayer(om.cache, hybrid))

    def _decode_eager(self, tokens, positions, batch, kv_len):
        ids = torch.tensor([tokens], dtype=torch.long).T
        pos = torch.tensor(positions, dtype=torch.long)
        try:
            with decoding(DecodeMode(self.grouped(), capture=self.capture)):
                return self._decode_forward(ids, pos, kv_len)
        finally:
            self.capture.release(self.om.cache)


@pytest.mark.parametrize("fraction", [0.5, 1e-9], ids=["cache50", "cachemin"])
@pytest.mark.parametrize("family", FAMILIES)
def test_segmented_hybrid_gives_the_reference_tokens(family, fraction, checkpoints, references):
    prompt, _, ref_tokens = references[family]
    om = load_checkpoint(
        checkpoints[family], torch.device("cpu"), torch.float32, CacheBudget(fraction=fraction)
    )
    hybrid = HostExperts(om.store, HybridRates(copy_ms=1.0, host_ms=1e-4), _expert_mlp)  # the host takes all
    runner = EmulatedRunner(om, hybrid)
    assert runner.greedy(prompt, NEW) == ref_tokens
    assert runner.capture.shared > 0
    for slot in runner.capture.slots.values():  # every layer's slot was reset after its use
        assert bool((slot.sub == -1).all()) and bool((slot.keep == 1).all()) and not slot.out.any()
    c = om.counters.totals()
    assert c["host_computed"] > 0
    assert c["requests"] == c["hits_resident"] + c["hits_prefetched"] + c["misses"]
    assert c["bytes_demand"] == (c["misses"] - c["host_computed"]) * om.store.layout.nbytes
    # the replayer times the host side of the layer-steps it gave the host, the host's output inside it
    assert hybrid.spent.experts == c["host_computed"] and 0 < hybrid.spent.output_s <= hybrid.spent.route_s


def test_a_captured_step_uses_the_buffers_made_before_the_capture(fake_cuda_graph):
    """The route segment's HybridSlot takes the layer's `hybrid_buffers`, never a tensor made inside the
    capture (the graph pool would hand it memory that the segment's own replay overwrites: the H200's
    out-of-bounds read before the fix); a step of another shape than the buffers' is refused."""
    from engine.runner.capture import GraphCapture
    from engine.runner.graphs import hybrid_buffers
    from engine.runner.host_buffers import HostArena

    bufs = hybrid_buffers(2, batch=4, top_k=2, hidden=8, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert [(b["sub"].dtype, b["keep"].dtype, b["out"].dtype) for b in bufs] == [
        (torch.long, torch.float32, torch.bfloat16)
    ] * 2
    arena = HostArena.sized(2, rows=4, experts=4, top_k=2, pinned=False)
    cap = GraphCapture(None, whole=False, layers=2, hybrid=bufs, arena=arena)
    ids, hidden, weights = torch.zeros((4, 2), dtype=torch.int32), torch.zeros((4, 8)), torch.zeros((4, 2))
    slot = cap.on_routing(1, ids, object(), hidden, weights)["hybrid"]
    assert slot.sub is bufs[1]["sub"] and slot.keep is bufs[1]["keep"] and slot.out is bufs[1]["out"]
    assert slot.x is hidden and slot.w is weights
    (_, action), = cap.segments  # fmt: skip
    assert action.hybrid is slot and action.dev is ids and action.host.dtype == ids.dtype
    with pytest.raises(ValueError, match="hybrid buffers of layer 0"):
        cap.on_routing(
            0, torch.zeros((2, 2), dtype=torch.int32), object(), torch.zeros((2, 8)), torch.zeros((2, 2))
        )
    whole = GraphCapture(None, whole=True, layers=2, hybrid=bufs)  # one graph for the step: no host share
    assert whole.hybrid is None
