"""Routing replay (`--routing twin:PATH`): the random-weight model of a real shape runs with its routers'
top-k ids and weights, token by token, and its predictors' outputs replaced by a routing twin's on the same
text (the artefact `bench/twin_replay.py` writes). Copies, kernels and stalls are the engine's own; only
the choice of experts comes from the twin. Bench only: nothing in the serving path imports this.

How (shape legend: L = MoE layers, N = the artefact's tokens, k = routed experts per token, k' = predicted,
T = tokens of one forward, E = experts):
- the whole replay lives on the device: ids [L, N, k] long, weights [L, N, k] float32, predicted ids
  [L, N, k'] long, and a cursor [R] long (R = the most rows a runner decodes): the artefact index of the
  token each row feeds now;
- each MoE layer's router module gets an instance `forward` that runs the router it had (fused or not, so
  its time is paid) and returns the same (logits, weights, ids) tuple with weights and ids gathered from
  the tables at the cursor: a decode step's row r reads cursor[r], a prefill of T tokens reads
  cursor[0] + 0..T-1. Inside a captured CUDA graph this is a gather with a device index: the graph reads
  whatever the cursor holds when it is replayed;
- `ReplayRunner` wraps a runner: before each prefill and decode it writes the cursor (one device fill per
  row, outside any graph, on the stream the step then runs on), from the row's artefact offset (found from
  the prompt's tokens at prefill) and the step's position; it refuses a token that is not the artefact's
  token at that index, so the replayed routing always belongs to the token being decoded;
- `ReplayedBank` wraps the predictor bank given to the prefetcher: the real bank's `forward_layer` still
  runs (its time is paid, its output dropped) and the scores it returns rank the twin's predicted ids
  first (descending from 20 in steps of 0.25, exact in bf16) and every other expert at -20. With a
  lookahead distance d (`--policies exact+d`, an artefact with `predicted_ids_ahead_<d>`) it is a bank of
  L - d predictors: predictor i runs the real bank's predictor i on layer i's input and returns the twin's
  lookahead bank's ids for layer i + d, so the prefetcher (a bundle of `distance` d) issues them d layers
  early. Over a `KernelBank` (`--predictor-kernel`) its `top_ids` runs the kernel's ranking launch and
  returns the twin's first M predicted ids, as the top-k policies' fast path does in the engine.

Imports numpy, torch, `bench.twin_replay` (the artefact), `engine.model.offload.decode_mode` (whether a
forward is a decode step) and `engine.api.policies` (the policy table) only.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import twin_replay
from bench.policy_names import policy_width
from engine.api.policies import PREDICTOR_POLICIES
from engine.model.offload import decode_mode

RANDOM = "random"
MAX_ROWS = 64  # cursor rows: more than any runner of the benchmark decodes at once
HIGH, STEP, LOW = 20.0, 0.25, -20.0  # replayed scores: predicted ids HIGH - STEP * rank, the rest LOW


def parse_routing(arg: str) -> Path | None:
    """`--routing`: "random" -> None; "twin:PATH" -> the artefact's path (its .json or .npz)."""
    if arg == RANDOM:
        return None
    if arg.startswith("twin:") and len(arg) > 5:
        return Path(arg[5:])
    raise SystemExit(f"--routing {arg!r}: expected 'random' or 'twin:PATH' (a twin_replay_<shape> artefact)")


@dataclass
class Segment:
    start: int  # artefact index of the prompt's first token
    prompt: list[int]
    feed: list[int]


class TwinReplay:
    """A loaded artefact checked against the model, and the decode text cut from it."""

    def __init__(self, path: Path, om) -> None:
        self.path = Path(path)
        try:
            self.manifest, self.arrays = twin_replay.load(self.path)
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"--routing twin:{path}: {err}") from None
        check_topology(self.manifest, self.arrays, om)
        self.tokens = self.arrays["tokens"].astype(np.int64)  # [N]
        npz = self.path.with_suffix(".npz").name
        self.label = f"twin-replayed ({npz}, sha256 {self.manifest['sha256'][:16]})"

    def segments(self, runs: int, prompt_tokens: int, new_tokens: int) -> list[Segment]:
        """`runs` + 1 stretches of `prompt_tokens` + `new_tokens` tokens, each inside one artefact prompt
        (the twin routed each prompt alone), consecutive stretches of a prompt first."""
        seg, out = prompt_tokens + new_tokens, []
        offsets = self.arrays["offsets"]
        for p in range(len(offsets) - 1):
            a, b = int(offsets[p]), int(offsets[p + 1])
            while a + seg <= b and len(out) < runs + 1:
                ids = self.tokens[a : a + seg].tolist()
                out.append(Segment(a, ids[:prompt_tokens], ids[prompt_tokens:]))
                a += seg
        if len(out) < runs + 1:
            raise SystemExit(
                f"{self.path.name}: only {len(out)} stretches of {seg} tokens fit in its prompts, "
                f"{runs + 1} needed; lower --new-tokens or --runs"
            )
        return out

    def long_prompt(self, tokens: int) -> Segment:
        """The prefill measurement's prompt: the start of the longest artefact prompt, at most `tokens`."""
        offsets = self.arrays["offsets"]
        p = int(np.argmax(np.diff(offsets)))
        a = int(offsets[p])
        n = min(tokens, int(offsets[p + 1]) - a)
        return Segment(a, self.tokens[a : a + n].tolist(), [])

    def describe(self, segments: list[Segment], long_prompt: Segment) -> dict:
        m = self.manifest
        return {
            "file": str(self.path.with_suffix(".npz")),
            "sha256": m["sha256"],
            "shape": m.get("shape"),
            "routing_source": m.get("routing_source"),
            "twin_fingerprint": m.get("twin_fingerprint"),
            "predictors": m.get("predictors"),
            "top_k": m["top_k"],
            "k_prime": m["k_prime"],
            "segments": [[s.start, len(s.prompt), len(s.feed)] for s in segments],  # artefact index
            "long_prompt": [long_prompt.start, len(long_prompt.prompt)],
        }


def check_topology(manifest: dict, arrays: dict, om) -> None:
    """The artefact's MoE layers, experts and k must be the model's; SystemExit saying what differs."""
    experts = om.store.layout.num_experts
    layer_ids = [int(layer.layer_id) for layer in om.layers]
    want = {"MoE layers": len(om.layers), "decoder layer ids": layer_ids, "top-k": int(om.top_k)}
    got = {
        "MoE layers": int(manifest["num_moe_layers"]),
        "decoder layer ids": [int(i) for i in arrays["layer_ids"]],
        "top-k": int(manifest["top_k"]),
    }
    bad = [f"{k}: artefact {got[k]}, model {want[k]}" for k in want if got[k] != want[k]]
    most = max(int(arrays["routed_ids"].max(initial=0)), int(arrays["predicted_ids"].max(initial=0)))
    if most >= experts:
        bad.append(f"experts: the artefact routes to expert {most}, the model has {experts}")
    if manifest.get("num_experts") not in (None, experts):
        bad.append(f"experts: artefact {manifest['num_experts']}, model {experts}")
    if bad:
        raise SystemExit("the twin replay artefact does not match the model: " + "; ".join(bad))


class DeviceReplay:
    """The replay's tables and cursor on the model's device, and the index a forward of T tokens reads."""

    def __init__(self, replay: TwinReplay, device: torch.device) -> None:
        a = replay.arrays
        self.n = int(a["tokens"].size)
        self.ids = torch.from_numpy(a["routed_ids"].astype(np.int64)).to(device)  # [L, N, k]
        self.weights = torch.from_numpy(a["routed_weights"].astype(np.float32)).to(device)  # [L, N, k]
        self.predicted = torch.from_numpy(a["predicted_ids"].astype(np.int64)).to(device)  # [L, N, k']
        self.ahead = {  # d -> [L - d, N, k']: the lookahead banks' ids of layer i + d, from layer i
            d: torch.from_numpy(a[twin_replay.ahead_key(d)].astype(np.int64)).to(device)
            for d in replay.manifest.get("ahead", [])
        }
        self.cursor = torch.zeros(MAX_ROWS, dtype=torch.long, device=device)  # [R]
        self.arange = torch.arange(self.n, dtype=torch.long, device=device)  # [N]
        kp = self.predicted.shape[-1]
        self.ranks = HIGH - STEP * torch.arange(kp, dtype=torch.float32, device=device)  # [k']

    def index(self, t: int) -> torch.Tensor:
        """[T] artefact indices of this forward's tokens (device; no host sync)."""
        if decode_mode() is not None:  # a decode step (eager or being captured): one token per row
            return self.cursor[:t]
        return self.cursor[:1] + self.arange[:t]  # a prefill of one row

    def set_rows(self, indices: list[int]) -> None:
        for r, i in enumerate(indices):
            self.cursor[r].fill_(i)  # a device fill, ordered before the step on the same stream


def _replayed_forward(own, table: DeviceReplay, layer: int):
    """A router forward returning the router's own tuple with weights and ids taken from the replay."""

    def forward(self, *args, **kwargs):
        out = own(*args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 3 and not out[2].is_floating_point()):
            raise TypeError(
                f"{type(self).__name__} returns {type(out).__name__}, not (logits, weights, ids): "
                "the routing replay cannot replace it"
            )
        logits, w, ids = out
        k = ids.shape[-1]
        idx = table.index(ids.numel() // k)  # [T]
        new_ids = table.ids[layer].index_select(0, idx).to(ids.dtype).view(ids.shape)  # [T, k]
        new_w = table.weights[layer].index_select(0, idx).to(w.dtype).view(w.shape)  # [T, k]
        return logits, new_w, new_ids

    return forward


@contextmanager
def replayed_routers(om, table: DeviceReplay) -> Iterator[None]:
    """Every MoE layer's router returns the replay's routing while the block runs (instance attribute
    `forward`, restored on the way out). Enter it after the runners' router fusion (`ModelRunner`)."""
    saved = []
    for layer in om.layers:
        mod = layer.router
        saved.append((mod, mod.__dict__.get("forward")))
        mod.forward = types.MethodType(_replayed_forward(mod.forward, table, layer.index), mod)
    try:
        yield
    finally:
        for mod, own in saved:
            if own is None:
                del mod.forward
            else:
                mod.forward = own


class ReplayedBank:
    """The predictor bank as the prefetcher's scorer sees it: the real bank runs, the twin's predictions
    are what it returns ([T, E] scores ranking the artefact's predicted ids first). `distance` d > 0: the
    twin's lookahead predictions, L - d predictors (predictor i names layer i + d's experts)."""

    def __init__(self, bank, table: DeviceReplay, distance: int = 0) -> None:
        if distance and distance not in table.ahead:
            raise ValueError(f"the twin replay artefact has no lookahead predictions of distance {distance}")
        self.bank, self.table, self.distance = bank, table, distance
        self.predicted = table.ahead[distance] if distance else table.predicted

    def forward_layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        real = self.bank.forward_layer(index, x)  # [T, E], paid for and dropped
        pred = self.predicted[index].index_select(0, self.table.index(x.shape[0]))  # [T, k']
        out = torch.full_like(real, LOW)
        return out.scatter_(1, pred, self.table.ranks.to(out.dtype).expand(pred.shape[0], -1))

    def top_ids(self, index: int, x: torch.Tensor, m: int) -> torch.Tensor | None:
        """A top-k policy's M ids where the real bank ranks by itself (`KernelBank.top_ids`, paid for and
        dropped): the twin's first M predicted ids, what ranking `forward_layer`'s scores would give; None
        where the real bank gives none (then the scores are ranked) or M exceeds the twin's k'."""
        ranker = getattr(self.bank, "top_ids", None)
        if ranker is None or m > self.predicted.shape[-1] or ranker(index, x, m) is None:
            return None
        return self.predicted[index].index_select(0, self.table.index(x.shape[0]))[:, :m]

    def __len__(self) -> int:
        return len(self.bank) - self.distance


class ReplayRunner:
    """A runner whose prefills and decode steps first point the replay's cursor at their tokens; every
    other attribute (read or written) is the wrapped runner's."""

    _own = ("_runner", "_table", "_tokens", "_starts", "_base")

    def __init__(self, runner, table: DeviceReplay, tokens: np.ndarray, starts: dict) -> None:
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_tokens", tokens)  # [N] the artefact's tokens
        object.__setattr__(self, "_starts", starts)  # tuple(prompt tokens) -> artefact index
        object.__setattr__(self, "_base", {})  # row -> artefact index of its position 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def __setattr__(self, name, value) -> None:
        setattr(self._runner, name, value)

    def prefill(self, row: int, token_ids: list[int], start: int = 0):
        at = self._starts.get(tuple(token_ids))
        if at is None:
            raise ValueError(
                "routing replay: a prefill of tokens that are not one of the artefact's stretches"
            )
        self._base[row] = at - start
        self._table.set_rows([at])
        return self._runner.prefill(row, token_ids, start)

    def decode(self, tokens: list[int], positions: list[int]):
        idx = [self._base[r] + p for r, p in enumerate(positions)]
        for tok, i in zip(tokens, idx, strict=True):
            if not 0 <= i < self._table.n or int(self._tokens[i]) != tok:
                raise ValueError(f"routing replay: token {tok} is not the artefact's token at index {i}")
        self._table.set_rows(idx)
        return self._runner.decode(tokens, positions)


def predictions_by_policy(policies: list[str], routing: str) -> dict[str, str]:
    """What each policy's predictions come from under `routing` (the record's header, each config)."""
    twin = routing != RANDOM
    out = {}
    for p in policies:
        if p in PREDICTOR_POLICIES:
            out[p] = (
                "the twin's predictors (replayed; the real-shape bank runs, its output dropped)"
                if twin
                else "the real-shape bank trained on the random-weight model's traces"
            )
        elif (base := p.partition("+")[0].partition("@")[0]) in PREDICTOR_POLICIES:
            width = policy_width(p)
            top = f", each tap's top {width}" if width is not None else ""
            d = p.partition("+")[2]
            if not d:  # overprovision@m: the same-layer predictors
                out[p] = predictions_by_policy([base], routing)[base] + top
                continue
            out[p] = (
                f"the twin's lookahead predictors of distance {d}{top} (replayed that many MoE layers "
                "ahead; the real-shape bank's predictors for the layers they reach run, output dropped)"
            )
        elif p == "oracle":
            out[p] = "the routing `none` recorded at the same cache size"
        elif p.startswith("oracle+"):
            out[p] = f"the routing `none` recorded at the same cache size, issued {p[7:]} MoE layers ahead"
        elif p == "crosslayer":
            out[p] = "the random-weight model's next router (not replayed)" if twin else "the next router"
        else:
            out[p] = "none"
    return out


def expected_routing(replay: TwinReplay, segments: list[Segment]) -> list[list[list[int]]]:
    """Per MoE layer, the sorted experts each layer-step of one `Workload.run` must route: per segment
    the prompt's prefill (every token's experts together), then each fed token's."""
    ids = replay.arrays["routed_ids"]  # [L, N, k]
    out: list[list[list[int]]] = [[] for _ in range(ids.shape[0])]
    for layer, steps in enumerate(out):
        for s in segments:
            a, p = s.start, len(s.prompt)
            steps.append(sorted({int(e) for e in ids[layer, a : a + p].ravel()}))
            steps += [sorted({int(e) for e in ids[layer, a + p + i]}) for i in range(len(s.feed))]
    return out


def routing_check(replay: TwinReplay, segments: list[Segment], recorded: list[list[list[int]]]) -> dict:
    """The routing `none` recorded (the cache's routing listener) against the artefact's, layer-step by
    layer-step: the replay worked only if every one matches."""
    want = expected_routing(replay, segments)
    steps = sum(len(s) for s in want)
    same = sum(a == b for w, r in zip(want, recorded, strict=False) for a, b in zip(w, r, strict=False))
    shape_ok = [len(w) for w in want] == [len(r) for r in recorded]
    return {"layer_steps": steps, "matching": same, "ok": shape_ok and same == steps}
