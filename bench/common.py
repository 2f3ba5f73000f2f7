"""Helpers the GPU benchmarks share: the machine's name, pinned-copy bandwidth, profiler-trace overlap."""

from __future__ import annotations

import bisect
import statistics

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def pinned_bandwidth(nbytes: int, reps: int = 10) -> dict:
    """Host->device bandwidth of one large copy from pinned memory (median of `reps`, CUDA events)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dev.copy_(host, non_blocking=True)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    t = statistics.median(times)
    return {"bytes": nbytes, "median_s": t, "gb_per_s": nbytes / t / 1e9}


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(merged: list[tuple[float, float]], starts: list[float], a: float, b: float) -> float:
    """Length of [a, b] covered by the disjoint sorted intervals `merged`."""
    i = max(0, bisect.bisect_right(starts, a) - 1)
    total = 0.0
    while i < len(merged) and merged[i][0] < b:
        lo, hi = max(a, merged[i][0]), min(b, merged[i][1])
        if hi > lo:
            total += hi - lo
        i += 1
    return total


def chrome_trace_overlap(trace: dict) -> dict:
    """From a torch.profiler Chrome trace: host->device copy time, and how much of it ran while a
    compute kernel was running (any stream); how long the GPU did nothing inside its span (no kernel and
    no copy: it waited for the host), and how long the host sat in CUDA's synchronising calls (waiting for
    the GPU). Times in ms."""
    kernels, copies, busy, host_sync = [], [], [], 0.0
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        cat, name = ev.get("cat", ""), ev.get("name", "")
        span = (float(ev["ts"]), float(ev["ts"]) + float(ev["dur"]))
        if cat == "kernel":
            kernels.append(span)
        elif cat == "gpu_memcpy" and "HtoD" in name:
            copies.append(span)
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            busy.append(span)
        elif cat == "cuda_runtime" and "Synchronize" in name:
            host_sync += span[1] - span[0]
    merged = _merge(kernels)
    starts = [a for a, _ in merged]
    copy_us = sum(b - a for a, b in copies)
    overlapped_us = sum(_covered(merged, starts, a, b) for a, b in copies)
    span_us = (max(b for _, b in busy) - min(a for a, _ in busy)) if busy else 0.0
    return {
        "copies": len(copies),
        "copy_ms": copy_us / 1e3,
        "copy_concurrent_with_compute_ms": overlapped_us / 1e3,
        "overlap_share": overlapped_us / copy_us if copy_us else None,
        "kernels": len(kernels),
        "compute_busy_ms": sum(b - a for a, b in merged) / 1e3,
        "gpu_span_ms": span_us / 1e3,
        "gpu_idle_ms": (span_us - sum(b - a for a, b in _merge(busy))) / 1e3,
        "host_sync_ms": host_sync / 1e3,
    }


def device_bandwidth(nbytes: int = 1 << 30, reps: int = 10) -> dict:
    """Device-memory bandwidth of a large device-to-device copy (bytes read + written per second)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    t = statistics.median(times)
    return {"bytes": nbytes, "median_s": t, "gb_per_s": 2 * nbytes / t / 1e9}


def active_bytes_per_token(om) -> dict:
    """Weight bytes one decode token must read: every non-expert weight (the embedding table only one row)
    plus top-k experts of every MoE layer. Divided by the device bandwidth, the HBM floor per token."""
    emb = om.model.get_input_embeddings().weight
    dense = 0
    for p in om.model.parameters():
        if p.is_meta:
            continue
        dense += p.numel() * p.element_size()
    tied = om.model.get_output_embeddings() is not None and om.model.get_output_embeddings().weight is emb
    emb_bytes = emb.numel() * emb.element_size()
    if not tied:
        dense -= emb_bytes - emb.shape[1] * emb.element_size()  # an untied input table: one row is read
    experts = len(om.layers) * om.top_k * om.store.layout.nbytes
    return {"dense_bytes": dense, "expert_bytes": experts, "total_bytes": dense + experts}


class experts_on_device:
    """Context: every expert back in its module on the GPU and transformers' default experts code, so
    `om.model` is the unmodified transformers model; the offloaded set-up is restored on exit. The caller
    must have shrunk the expert cache first (the experts take its place on the GPU)."""

    def __init__(self, om) -> None:
        self.om = om

    def __enter__(self) -> str:
        from torch import nn

        om = self.om
        for lay in om.layers:
            views = om.store.layout.views(om.store.buffers[lay.index])
            for name, v in views.items():
                setattr(lay.experts, name, nn.Parameter(v.to(om.device), requires_grad=False))
        try:
            impl = om.model.get_correct_experts_implementation(None)
        except Exception:  # older transformers: the eager loop
            impl = "eager"
        om.model.set_experts_implementation(impl)
        return impl

    def __exit__(self, *exc) -> None:
        from engine.model.offload import install_offload, strip_expert_weights

        for lay in self.om.layers:
            strip_expert_weights(lay.experts)
        torch.cuda.empty_cache()
        install_offload(self.om.model, self.om.cache, self.om.layers)


@torch.inference_mode()
def plain_logits(om, prompt: list[int], feed: list[int]) -> torch.Tensor:
    """The unmodified transformers forward's next-token logits before each fed token: [len(feed), V]
    (float32, on the CPU). Same caveat as `experts_on_device`."""
    from transformers import DynamicCache

    dev = om.device
    out = []
    with experts_on_device(om):
        kv = DynamicCache()
        logits = om.model(torch.tensor([prompt], device=dev), past_key_values=kv, use_cache=True).logits
        for tok in feed:
            out.append(logits[0, -1].float().cpu())
            logits = om.model(torch.tensor([[tok]], device=dev), past_key_values=kv, use_cache=True).logits
    return torch.stack(out)


@torch.inference_mode()
def plain_decode(om, prompt: list[int], feed: list[int], runs: int) -> dict:
    """Decode speed of the unmodified transformers forward: every expert back in its module on the GPU,
    transformers' default experts implementation and attention, a DynamicCache, batch 1.

    The caller must have shrunk the expert cache first (the experts take its place on the GPU); the
    offloaded set-up is restored afterwards."""
    import time

    from transformers import DynamicCache

    dev = om.device
    per_token = []
    argmax: list[torch.Tensor] = []
    with experts_on_device(om) as impl:
        for r in range(runs + 1):
            kv = DynamicCache()
            logits = om.model(torch.tensor([prompt], device=dev), past_key_values=kv, use_cache=True).logits
            torch.cuda.synchronize(dev)
            argmax = []
            t0 = time.perf_counter()
            for tok in feed:
                argmax.append(torch.argmax(logits[0, -1]))
                logits = om.model(
                    torch.tensor([[tok]], device=dev), past_key_values=kv, use_cache=True
                ).logits
            torch.cuda.synchronize(dev)
            if r:  # the first run warms up
                per_token.append((time.perf_counter() - t0) / len(feed))
    med = statistics.median(per_token)
    return {
        "experts_implementation": impl,
        "attention": om.model.config._attn_implementation,
        "ms_per_token": [1e3 * t for t in per_token],
        "ms_per_token_median": 1e3 * med,
        "tok_s_median": 1 / med,
        "tok_s_min": 1 / max(per_token),
        "tok_s_max": 1 / min(per_token),
        "tokens": [int(t) for t in argmax],  # argmax before each fed token, as bench/decode.py records
    }


@torch.inference_mode()
def plain_batched(om, rows: list[tuple[list[int], list[int]]], runs: int) -> dict:
    """Decode throughput of the unmodified transformers forward for len(rows) sequences at once: the
    prompts (all of one length) prefilled as a batch, then one step per fed token for every row.
    Same caveat as `experts_on_device`; tokens/s count every row's tokens."""
    import time

    from transformers import DynamicCache

    dev = om.device
    prompts = torch.tensor([p for p, _ in rows], device=dev)  # [B, T]
    steps = min(len(f) for _, f in rows)
    feed = torch.tensor([f[:steps] for _, f in rows], device=dev)  # [B, steps]
    per_step = []
    with experts_on_device(om):
        for r in range(runs + 1):
            kv = DynamicCache()
            om.model(prompts, past_key_values=kv, use_cache=True)
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for i in range(steps):
                om.model(feed[:, i : i + 1], past_key_values=kv, use_cache=True)
            torch.cuda.synchronize(dev)
            if r:
                per_step.append((time.perf_counter() - t0) / steps)
    return throughput(per_step, len(rows))


def throughput(per_step: list[float], batch: int) -> dict:
    """Tokens/s of `batch` rows from per-step times (median, min and max over the runs)."""
    med = statistics.median(per_step)
    return {
        "batch": batch,
        "ms_per_step": [1e3 * t for t in per_step],
        "tok_s_median": batch / med,
        "tok_s_min": batch / max(per_step),
        "tok_s_max": batch / min(per_step),
    }
