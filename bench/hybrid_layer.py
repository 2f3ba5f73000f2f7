"""Hybrid misses, one MoE layer (issue #17, item 4): does computing some of a layer's missed experts on the
host CPU while PCIe copies the others beat copying them all?

    python bench/hybrid_layer.py --out bench/results                  # one GPU (Qwen3-30B-A3B expert shape)
    python bench/hybrid_layer.py --smoke --device cpu --out /tmp/hl   # CPU, toy shape (the CI test)

For M missed experts of one decode token (batch 1), the layer's misses are split: m are computed on the host
from the pinned expert store (the token's hidden state crosses to the host, the m outputs come back), the
other M - m are copied to device slots on a copy stream and computed there; the layer is done when both are.
Each (M, m) is timed with host timers around the whole layer (median of `--reps`), with the engine's own
expert math (`engine.model.offload._expert_mlp` on the store's views: the same ops the offloaded forward runs)
and a real `ExpertStore` in page-locked memory. `m = 0` is what the engine does today (copy every miss).

The model in `bench/twin_eviction.py` (`hybrid_ms`) predicts the best split from three measured rates: a
copy's time per expert, the host's time per expert, and the host's slowdown while copies run; this measures
the layer itself, with its syncs and launches, and writes both: per M the time of every m, the best m, its
speedup over m = 0, and the split the model's rule (m = M * copy / (copy + host)) would pick. Also the two
rates alone (copies only, host compute only, and host compute while copies run).

Writes `<out>/hybrid_layer.json` and `.png`. Imports torch, numpy-free; the engine's store and expert math.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.experts.store import ExpertLayout, ExpertStore  # noqa: E402
from engine.model.offload import _expert_mlp  # noqa: E402

# Qwen3-30B-A3B's routed expert: hidden 2048, intermediate 768, gated SiLU; 9.4 MB in bf16
SHAPES = {"qwen3-30b-a3b": (2048, 768), "deepseek-v2-lite": (2048, 1408), "smoke": (64, 32)}


def expert_module() -> SimpleNamespace:
    """What `_expert_mlp` reads of a transformers experts module: a gated SiLU MLP, weights [out, in]."""

    def gate(h: torch.Tensor) -> torch.Tensor:
        g, u = h.chunk(2, dim=-1)
        return F.silu(g) * u

    return SimpleNamespace(has_gate=True, is_transposed=False, has_bias=False, _apply_gate=gate)


def build_store(experts: int, hidden: int, inter: int, dtype: torch.dtype, pin: bool) -> ExpertStore:
    layout = ExpertLayout.from_shapes(
        {"gate_up_proj": (2 * inter, hidden), "down_proj": (hidden, inter)}, dtype, experts
    )
    store = ExpertStore(layout, 1, pin=pin)
    buf = store.allocate(0)
    gen = torch.Generator().manual_seed(0)
    buf.copy_((torch.randn(buf.shape, generator=gen) * 0.02).to(dtype))
    return store


class Layer:
    """One MoE layer's misses: device slots for the copied experts, the host store for the computed ones."""

    def __init__(self, store: ExpertStore, device: torch.device, slots: int, mod) -> None:
        self.store, self.device, self.mod = store, device, mod
        self.cuda = device.type == "cuda"
        numel = store.layout.numel
        self.slots = torch.empty((slots, numel), dtype=store.layout.dtype, device=device)
        self.slot_views = store.layout.views(self.slots)
        self.host_views = store.layout.views(store.buffers[0])
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        hidden = store.layout.params[1].shape[0]
        self.x_host = torch.empty((1, hidden), dtype=store.layout.dtype, pin_memory=self.cuda)
        self.y_host = torch.empty((1, hidden), dtype=store.layout.dtype, pin_memory=self.cuda)

    def run(self, x: torch.Tensor, experts: list[int], m: int) -> torch.Tensor:
        """The layer's output for token x [1, D] routed to `experts` (weight 1 each), the first m computed
        on the host, the rest copied to slots and computed on the device."""
        host_ids, dev_ids = experts[:m], experts[m:]
        done = []
        if self.cuda:
            main = torch.cuda.current_stream(self.device)
            self.copy_stream.wait_stream(main)
            with torch.cuda.stream(
                self.copy_stream
            ):  # the copies start first: they run while the host computes
                for s, e in enumerate(dev_ids):
                    self.slots[s].copy_(self.store.buffers[0][e], non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(self.copy_stream)
                    done.append(ev)
        else:
            for s, e in enumerate(dev_ids):
                self.slots[s].copy_(self.store.buffers[0][e])
        out = torch.zeros_like(x)
        if host_ids:
            self.x_host.copy_(x)  # the token's hidden state to the host (a sync on CUDA: the layer's input)
            y = torch.zeros_like(self.x_host)
            for e in host_ids:
                y += _expert_mlp(self.mod, self.host_views, e, self.x_host)
            self.y_host.copy_(y)
            out += self.y_host.to(self.device, non_blocking=True)
        for s, _e in enumerate(dev_ids):
            if done:
                torch.cuda.current_stream(self.device).wait_event(done[s])
            out += _expert_mlp(self.mod, self.slot_views, s, x)
        return out


def timed(fn, reps: int, cuda: bool, device) -> float:
    """Median ms of `fn()` over `reps` runs (after 3 warm-ups), the device synchronised around each."""
    for _ in range(3):
        fn()
    ms = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        ms.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ms)


class Rotor:
    """The next n expert ids, cycling through the store."""

    def __init__(self, experts: int) -> None:
        self.experts, self.at = experts, 0

    def take(self, n: int) -> list[int]:
        ids = [(self.at + i) % self.experts for i in range(n)]
        self.at = (self.at + n) % self.experts
        return ids


def rates(layer: Layer, x: torch.Tensor, reps: int, rotor: Rotor) -> dict:
    """ms per expert: copying it, computing it on the host alone, and on the host while as many copies run."""
    cuda, dev = layer.cuda, layer.device
    n = layer.slots.shape[0]

    def copies(ids=None) -> None:
        for s, e in enumerate(ids or rotor.take(n)):
            layer.slots[s].copy_(layer.store.buffers[0][e], non_blocking=True)

    def host(ids=None) -> None:
        for e in ids or rotor.take(n):
            _expert_mlp(layer.mod, layer.host_views, e, layer.x_host)

    def host_during_copies() -> None:
        with torch.cuda.stream(layer.copy_stream):
            copies()
        host()

    out = {"copy_ms": timed(copies, reps, cuda, dev) / n, "host_ms": timed(host, reps, cuda, dev) / n}
    if cuda:
        out["host_during_copies_ms"] = timed(host_during_copies, reps, cuda, dev) / n
    return out


def model_split(misses: int, r: dict) -> int:
    """The split the rate model picks: m host experts so that both sides finish together."""
    h = r.get("host_during_copies_ms", r["host_ms"])
    return round(misses * r["copy_ms"] / (r["copy_ms"] + h))


def run(args) -> dict:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    hidden, inter = SHAPES["smoke" if args.smoke else args.shape]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    misses = [int(x) for x in args.misses.split(",")]
    # more experts than a host cache holds (64 of Qwen3's are 600 MB), each timed run taking the next ones:
    # the host reads its experts from memory, as it would in serving, not from its last-level cache
    experts = max(64 if not args.smoke else 8, 2 * max(misses))
    store = build_store(experts, hidden, inter, dtype, pin=cuda)
    rotor = Rotor(experts)
    mod = expert_module()
    layer = Layer(store, device, max(misses), mod)
    x = (torch.randn(1, hidden, generator=torch.Generator().manual_seed(1)) * 0.5).to(dtype).to(device)
    doc = {
        "kind": "hybrid_layer",
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "host_threads": args.threads,
        "shape": {"name": "smoke" if args.smoke else args.shape, "hidden": hidden, "intermediate": inter},
        "dtype": str(dtype),
        "expert_bytes": store.layout.nbytes,
        "reps": args.reps,
        "batch": 1,
    }
    ref = {}
    for n in misses:  # every split gives the same output (up to the host's and the device's rounding)
        ids = list(range(n))
        ref[n] = layer.run(x, ids, 0).float().cpu()
        mixed = layer.run(x, ids, n).float().cpu()
        err = float((mixed - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-12))
        if err > 0.05:
            raise SystemExit(
                f"{n} misses: the host's output differs from the device's by {err:.3f} (relative)"
            )
    doc["rates"] = r = rates(layer, x, args.reps, rotor)
    print(f"rates (ms per expert): {json.dumps({k: round(v, 4) for k, v in r.items()})}", flush=True)
    rows = []
    for n in misses:
        ms = [
            timed(lambda m=m, n=n: layer.run(x, rotor.take(n), m), args.reps, cuda, device)
            for m in range(n + 1)
        ]
        best = min(range(n + 1), key=ms.__getitem__)
        pick = model_split(n, r)
        rows.append(
            {
                "misses": n,
                "ms_by_host_experts": [round(v, 4) for v in ms],
                "best_host_experts": best,
                "speedup_best": round(ms[0] / ms[best], 3),
                "model_host_experts": pick,
                "speedup_model_pick": round(ms[0] / ms[pick], 3),
            }
        )
        print(
            f"{n} misses: copy all {ms[0]:.3f} ms; best {best} on the host {ms[best]:.3f} ms "
            f"({ms[0] / ms[best]:.2f}x); the rate model picks {pick} ({ms[0] / ms[pick]:.2f}x)",
            flush=True,
        )
    doc["rows"] = rows
    return doc


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in doc["rows"]:
        ms = r["ms_by_host_experts"]
        ax.plot(range(len(ms)), ms, marker="o", label=f"{r['misses']} misses")
    ax.set_xlabel("missed experts computed on the host (the rest copied)")
    ax.set_ylabel("ms per layer (median)")
    ax.set_title(f"Hybrid misses, one layer, batch 1: {doc['shape']['name']} expert on {doc['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[s for s in SHAPES if s != "smoke"], default="qwen3-30b-a3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--misses", default="1,2,3,4,6,8", help="missed experts per layer to time")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="host threads (torch)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="a toy expert shape (for the CPU test)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    doc = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hybrid_layer.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, args.out / "hybrid_layer.png")
    print(f"wrote {args.out}/hybrid_layer.{{json,png}}")


if __name__ == "__main__":
    main()
