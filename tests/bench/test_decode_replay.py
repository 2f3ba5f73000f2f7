"""`bench/decode.py --smoke --routing twin:PATH` on the CPU: the routers' choices and the predictions come
from a replay artefact (here a synthetic one in `bench/twin_replay.py`'s format, matching the smoke shape),
every record says so, and the greedy tokens stay the same across policies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import twin_replay
from bench.decode_lib.replay import check_topology, parse_routing

ROOT = Path(__file__).resolve().parents[2]
MMLU = ROOT.parent / "shared" / "data" / "mmlu" / "test"
LAYERS, EXPERTS, K, KP = 3, 16, 2, 3  # bench.decode_lib.model.SMOKE: 3 MoE layers, 16 experts, top-2


def synthetic_artefact(out: Path, prompts: int = 4, length: int = 80, seed: int = 0) -> Path:
    """Random routing of the smoke topology; the predicted ids are the routed ones plus one more, and the
    lookahead predictions of distance 1 (row i: layer i + 1's) likewise."""
    rng = np.random.default_rng(seed)
    n = prompts * length
    order = np.argsort(rng.random((LAYERS, n, EXPERTS)), axis=-1)  # a random permutation per layer-token
    routed = order[..., :K].astype(np.uint8)  # [L, N, k]
    w = np.sort(rng.random((LAYERS, n, K)), axis=-1)[..., ::-1]
    arrays = {
        "tokens": rng.integers(5, 4000, n).astype(np.int16),
        "offsets": (np.arange(prompts + 1) * length).astype(np.int32),
        "routed_ids": routed,
        "routed_weights": (w / w.sum(-1, keepdims=True)).astype(np.float16),
        "predicted_ids": order[..., :KP].astype(np.uint8),  # [L, N, k']: routed first, then one more
        "layer_ids": np.arange(LAYERS, dtype=np.int16),
        twin_replay.ahead_key(1): order[1:, :, :KP].astype(np.uint8),  # [L - 1, N, k']
    }
    rec = {"arrays": arrays, "prompts": [{"source": "synthetic", "text": "", "tokens": length}] * prompts}
    rec["ahead"] = [1]
    twin_replay.write(out, "twin_replay_smoke_test", rec, {"routing_source": "synthetic (test)"})
    return out / "twin_replay_smoke_test.json"


def test_parse_routing():
    assert parse_routing("random") is None
    assert parse_routing("twin:a/b.json") == Path("a/b.json")
    with pytest.raises(SystemExit):
        parse_routing("twin")


def test_topology_mismatch_fails_clearly(tmp_path):
    manifest, arrays = twin_replay.load(synthetic_artefact(tmp_path))
    layers = [SimpleNamespace(layer_id=i) for i in range(LAYERS)]
    om = SimpleNamespace(
        layers=layers, top_k=K, store=SimpleNamespace(layout=SimpleNamespace(num_experts=EXPERTS))
    )
    check_topology(manifest, arrays, om)  # matches
    om.top_k = 4
    with pytest.raises(SystemExit, match="top-k: artefact 2, model 4"):
        check_topology(manifest, arrays, om)
    om.top_k, om.store.layout.num_experts, om.layers = K, 8, layers[:2]
    with pytest.raises(SystemExit, match="MoE layers: artefact 3, model 2.*experts"):
        check_topology(manifest, arrays, om)


def expected_routing(arrays: dict, segments: list) -> list:
    """Per layer: each segment's prefill (the prompt's experts together), then each fed token's."""
    ids = arrays["routed_ids"]
    out = []
    for layer in range(ids.shape[0]):
        steps = []
        for start, prompt, feed in segments:
            steps.append(sorted({int(e) for e in ids[layer, start : start + prompt].ravel()}))
            steps += [sorted(int(e) for e in ids[layer, start + prompt + i]) for i in range(feed)]
        out.append(steps)
    return out


@pytest.mark.skipif(not MMLU.is_dir(), reason=f"MMLU data not found at {MMLU}")
def test_decode_bench_twin_replay_smoke(tmp_path):
    path = synthetic_artefact(tmp_path / "twin")
    cmd = [
        sys.executable, str(ROOT / "bench" / "decode.py"), "--smoke", "--prompts", str(MMLU),
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--runs", "2", "--new-tokens", "4",
        "--collect-prompts", "10", "--samples", "500", "--epochs", "1", "--policies", "none,exact,exact+1,exact+2,oracle,overprovision@1+1",
        "--fractions", "1.0,0.5", "--batches", "2", "--routing", f"twin:{path}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "decode_qwen3_30b_a3b_smoke.json").read_text())
    sha = json.loads(path.read_text())["sha256"]
    assert out["routing"] == f"twin-replayed (twin_replay_smoke_test.npz, sha256 {sha[:16]})"
    assert {c["summary"]["routing"] for c in out["configs"]} == {out["routing"]}
    assert all(c["summary"]["same_tokens_as_reference"] for c in out["configs"])
    assert out["replay"]["sha256"] == sha and out["replay"]["routing_check"]["ok"]
    # batched rows replay too: each row's tokens are checked against the artefact at its own index
    assert {f: set(v) for f, v in out["batched"]["engine"].items()} == {"1.0": {"2"}, "0.5": {"2"}}

    # the experts the engine routed (the cache's routing listener, as `none` @ 50% recorded them)
    _, arrays = twin_replay.load(path)
    recorded = json.loads((tmp_path / "work" / "routing_qwen3_30b_a3b_smoke.json").read_text())["layers"]
    segments = out["replay"]["segments"]
    assert len(segments) == 3 and all(p == 64 and f == 4 for _, p, f in segments)
    assert recorded == expected_routing(arrays, segments)

    # the predictions are the twin's: its top-2 predicted ids are the routed ones, so `exact` is perfect
    by = {(c["policy"], c["fraction"]): c["summary"] for c in out["configs"]}
    assert by[("exact", 0.5)]["online_recall"] == 1.0
    assert "twin's predictors" in by[("exact", 0.5)]["predictions"]
    # exact+1 issues the lookahead ids of layer i + 1 at layer i: perfect for layers 1 and 2, none for layer 0
    ahead, none = by[("exact+1", 0.5)], by[("none", 0.5)]
    assert "lookahead predictors of distance 1" in ahead["predictions"]
    assert ahead["hit_rate"] > none["hit_rate"] + 0.1, (ahead["hit_rate"], none["hit_rate"])
    # overprovision@1+1: the same bank, each tap's top 1 only (MOE_OVERPROVISION=1): fewer copies, fewer hits
    narrow = by[("overprovision@1+1", 0.5)]
    assert "each tap's top 1" in narrow["predictions"]
    assert narrow["hit_rate"] < ahead["hit_rate"]
    assert ("exact+2", 0.5) not in by  # the artefact has no distance 2: skipped, said in the log
    assert "exact+2 skipped: no lookahead predictions of that distance" in res.stdout + res.stderr


def test_a_replayed_bank_over_a_ranking_bank_gives_the_twins_first_ids():
    """`ReplayedBank.top_ids` (the top-k policies' fast path under `--predictor-kernel`): the real bank's
    ranking launch runs (its ids dropped) and the twin's first M predicted ids come back, what ranking the
    scores of `forward_layer` would give; None where the real bank cannot rank or M exceeds k'."""
    import torch

    from bench.decode_lib.replay import ReplayedBank

    predicted = torch.tensor([[[5, 1, 7], [2, 0, 3]], [[4, 6, 1], [9, 8, 2]]])  # [L=2, N=2, k'=3]
    table = SimpleNamespace(
        predicted=predicted,
        ahead={},
        ranks=torch.tensor([20.0, 19.75, 19.5]),
        index=lambda t: torch.tensor([1]),
    )
    ran = []

    class Ranking:  # a KernelBank's interface: forward_layer and top_ids
        def forward_layer(self, i, x):
            return torch.zeros(x.shape[0], 10)

        def top_ids(self, i, x, m):
            ran.append((i, m))
            return torch.zeros(x.shape[0], m, dtype=torch.long)

    x = torch.zeros(1, 4)
    bank = ReplayedBank(Ranking(), table)
    assert bank.top_ids(1, x, 2).tolist() == [[9, 8]] and ran == [(1, 2)]
    ranked = torch.topk(bank.forward_layer(1, x), 2, dim=-1).indices  # the scores path ranks the same ids
    assert ranked.tolist() == [[9, 8]]
    assert bank.top_ids(1, x, 4) is None  # more than the twin's k'
    torchy = SimpleNamespace(forward_layer=Ranking().forward_layer)  # a plain bank: no ranking launch
    assert ReplayedBank(torchy, table).top_ids(0, x, 2) is None
    prefill = Ranking()
    prefill.top_ids = lambda i, x, m: None  # the real bank declines (a prefill's rows)
    assert ReplayedBank(prefill, table).top_ids(0, x, 2) is None
