"""The decode benchmark's library on the CPU smoke shape: runners of another kind give the same greedy
tokens as the main runner, the torch-GEMV switch puts the runner back as it was, and the record checks
every configuration's tokens against the first one's; and which runs the sweep's coded copies make (with
stand-ins for the CUDA runners)."""

from __future__ import annotations

import gzip
import json

import pytest

from bench.decode_lib.model import PROMPT_TOKENS, build_bench
from bench.decode_lib.record import Record, add_ratios
from bench.decode_lib.seams import BENCH_MAX_LEN, runner_of_kind, torch_expert_gemv
from bench.decode_lib.timing import Workload, summarise
from engine.runner.runner import ModelRunner


def _segments(vocab: int, runs: int = 2, new: int = 3) -> list[tuple[list[int], list[int]]]:
    ids = [(7 * i + 3) % vocab for i in range((PROMPT_TOKENS + new) * (runs + 1))]
    seg = PROMPT_TOKENS + new
    return [
        (ids[i * seg : i * seg + PROMPT_TOKENS], ids[i * seg + PROMPT_TOKENS : (i + 1) * seg])
        for i in range(runs + 1)
    ]


def test_runners_of_another_kind_decode_the_same_tokens():
    b = build_bench("qwen3-30b-a3b", smoke=True, embed_std=1.0)
    main = Workload(ModelRunner(b.om, rows=1, max_len=BENCH_MAX_LEN), _segments(len(b.tok)))
    want = [r["tokens"] for r in main.run()]
    with runner_of_kind(b.om, graphs=False, host_reads=False) as other:
        assert other.graphs_enabled is False and other.host_reads is False
        assert [r["tokens"] for r in main.on(other).run()] == want
    before = main.runner.use_triton
    with torch_expert_gemv(main.runner) as runner:
        assert runner.use_triton is False
        assert [r["tokens"] for r in main.run()] == want
    assert main.runner.use_triton is before


def test_record_checks_tokens_and_derives_ratios(tmp_path):
    b = build_bench("qwen3-30b-a3b", smoke=True, embed_std=1.0)
    workload = Workload(ModelRunner(b.om, rows=1, max_len=BENCH_MAX_LEN), _segments(len(b.tok)))
    record = Record(tmp_path / "r.json", {"configs": []})
    runs = workload.run()
    s = summarise(runs, PROMPT_TOKENS, None)
    assert [len(r["step_s"]) for r in runs] == [len(r["tokens"]) for r in runs]  # one time a decode step
    assert len(s["steps_by_run"]) == len(runs) and all(r["p50_ms"] > 0 for r in s["steps_by_run"])
    record.add_config("none", 1.0, s, 48, 0.1, workload.runner.steps)
    other = {**s, "tokens": [[t + 1 for t in row] for row in s["tokens"]]}
    record.add_config("exact", 1.0, other, 48, 0.1, workload.runner.steps)
    assert [c["summary"]["same_tokens_as_reference"] for c in record.data["configs"]] == [True, False]
    add_ratios(record.data)
    assert record.data["ratios"]["exact@1.0"]["speedup_vs_none"] > 0
    assert (tmp_path / "r.json").stat().st_size > 0


def test_a_hybrid_config_records_where_the_hosts_time_went(tmp_path, monkeypatch):
    """The sweep's hybrid rows (run on CUDA by `bench/decode.py --hybrid`; here on the CPU smoke shape, the
    host taking every miss it may) carry the host's time against the calibration."""
    from bench.decode_lib.sweep import Deadline, Sweep, segmented_steps
    from bench.decode_lib.training import Bank
    from engine.experts.host_experts import HybridRates
    from engine.model import offload

    b = build_bench("qwen3-30b-a3b", smoke=True, embed_std=1.0)
    workload = Workload(ModelRunner(b.om, rows=1, max_len=BENCH_MAX_LEN), _segments(len(b.tok)))
    record = Record(tmp_path / "r.json", {"configs": []})
    sw = Sweep(workload, Bank(None, None, {}), tmp_path / "routing.json", None, record, Deadline(0), False)
    monkeypatch.setattr(offload, "calibrate", lambda *a, **k: HybridRates(copy_ms=1.0, host_ms=1e-4))
    segmented_steps(sw, 0.1, ["none"], hybrid=True)
    (config,) = record.data["configs"]
    assert config["variant"] == "hybrid"
    host = config["hybrid_host"]
    assert host["experts_per_token"] > 0 and host["calibrated_ms_per_pair"] == 1e-4
    assert 0 < host["output_ms_per_token"] <= host["route_ms_per_token"]


def test_coded_copies_run_each_policy_coded_and_with_the_settings_it_shares(monkeypatch):
    """`sweep.coded_copies`: every policy coded on the main runner; those also segmented on a segmented
    runner (`coded-segmented`); those also after demand on a runner with MOE_LOOKAHEAD_AFTER_DEMAND
    (`coded-after-demand`); the store coded once and put back plain afterwards."""
    import contextlib
    from types import SimpleNamespace

    import engine.model.coding as coding
    from bench.decode_lib import sweep

    kinds, measured, coded_calls = [], [], []

    @contextlib.contextmanager
    def runner_of_kind(om, **kw):
        kinds.append(kw)
        yield SimpleNamespace(kind=kw, reset_steps=lambda: None)

    code = SimpleNamespace(ratio=lambda store: 0.69, coded_bytes=2e9, layout=SimpleNamespace(steps=128))
    monkeypatch.setattr(sweep, "runner_of_kind", runner_of_kind)
    monkeypatch.setattr(coding, "attach_coded", lambda store, device: coded_calls.append(store) or code)
    store = SimpleNamespace(coded=None)
    runner = SimpleNamespace(om=SimpleNamespace(store=store, device="cuda"), reset_steps=lambda: None)
    sw = SimpleNamespace(
        workload=SimpleNamespace(runner=runner, on=lambda seg: seg),
        record=SimpleNamespace(data={}, skipped=lambda name: None),
        deadline=SimpleNamespace(passed=lambda: False),
        coded=None,
    )

    def measure(policy, fraction, variant=None, workload=None):
        assert store.coded is code  # every coded run copies codes
        measured.append((policy, variant, None if workload is None else workload.kind))

    sw.measure = measure
    sweep.coded_copies(sw, 0.5, ["none", "exact+2", "oracle+1"], ["none"], ["exact+2"])
    assert measured == [
        ("none", "coded", None),
        ("exact+2", "coded", None),
        ("oracle+1", "coded", None),
        ("none", "coded-segmented", {"host_reads": False, "after_demand": False}),
        ("exact+2", "coded-after-demand", {"host_reads": False, "after_demand": True}),
    ]
    assert store.coded is None and sw.coded is code and len(coded_calls) == 1
    assert sw.record.data["coded_experts"]["ratio"] == 0.69
    sweep.coded_copies(sw, 0.25, ["none"], [], [])  # a second cache size: coded once, not again
    assert len(coded_calls) == 1 and measured[-1] == ("none", "coded", None)


def test_a_full_gc_pass_inside_a_run_is_recorded_with_its_pause():
    import gc

    b = build_bench("qwen3-30b-a3b", smoke=True, embed_std=1.0)
    workload = Workload(ModelRunner(b.om, rows=1, max_len=BENCH_MAX_LEN), _segments(len(b.tok), new=4))
    real, calls = workload.runner.decode, []

    def decode(*a, **k):  # a full pass inside the second run's first step
        calls.append(1)
        if len(calls) == 9:
            gc.collect()
        return real(*a, **k)

    workload.runner.decode = decode
    runs = workload.run()  # the warm-up, then the measured runs
    s = summarise(runs, PROMPT_TOKENS, None)
    assert len(s["gc_by_run"]) == len(runs) == 2
    second = s["gc_by_run"][1]
    assert second["full"] >= 1 and second["max_ms"] > 0 and second["total_ms"] >= second["max_ms"]


def test_a_runs_step_spread_tells_uniformly_slow_steps_from_a_few_long_waits():
    from bench.decode_lib.record import spread_note
    from bench.decode_lib.timing import step_spread

    uniform = step_spread([0.040] * 10)
    assert uniform == {"p50_ms": pytest.approx(40.0), "p90_ms": pytest.approx(40.0),
                       "max_ms": pytest.approx(40.0), "over_2x_median": 0}  # fmt: skip
    waits = step_spread([0.020] * 8 + [0.100, 0.250])
    assert waits["p50_ms"] == pytest.approx(20.0) and waits["max_ms"] == pytest.approx(250.0)
    assert waits["over_2x_median"] == 2 and waits["p90_ms"] == pytest.approx(250.0)
    assert step_spread([])["p50_ms"] is None
    note = spread_note({"steps_by_run": [uniform, waits]})
    assert note == "; steps p50/max ms by run: 40.0/40.0 (0 slow), 20.0/250.0 (2 slow)"
    assert spread_note({}) == ""
    gcs = [
        {"passes": 3, "full": 0, "total_ms": 1.0, "max_ms": 0.5},
        {"passes": 2, "full": 1, "total_ms": 240.0, "max_ms": 233.4},
    ]
    assert (
        spread_note({"steps_by_run": [uniform, waits], "gc_by_run": gcs})
        == note + "; full GC passes 1 (longest 233 ms)"
    )


def test_a_named_configuration_is_profiled_after_its_runs_and_no_other(tmp_path):
    from bench.decode_lib.sweep import Deadline, Sweep, config_key
    from bench.decode_lib.training import Bank

    b = build_bench("qwen3-30b-a3b", smoke=True, embed_std=1.0)
    workload = Workload(ModelRunner(b.om, rows=1, max_len=BENCH_MAX_LEN), _segments(len(b.tok), new=10))
    record = Record(tmp_path / "r.json", {"configs": []})
    sw = Sweep(workload, Bank(None, None, {}), tmp_path / "routing.json", None, record, Deadline(0), False,
               profile=frozenset({config_key("none", 0.5, "coded")}), work=tmp_path,
               keep_traces=tmp_path / "traces")  # fmt: skip
    assert config_key("exact+2", 0.5, "coded") == "exact+2@0.5/coded" and config_key("none", 1.0) == "none@1"
    sw.measure("none", 0.5)
    sw.measure("none", 0.5, "coded")  # the key names the variant: only this one is profiled
    plain, profiled = (c["summary"] for c in record.data["configs"])
    assert "profile" not in plain
    p = profiled["profile"]
    assert p["decode_steps"] == 6 and p["gpu_idle_ms"] == 0.0 and p["copies"] == 0  # a CPU run: no GPU events
    assert {"host_sync_ms_per_step", "gpu_idle_ms_per_step", "copy_ms_per_step"} <= set(p)
    assert p["copy_gaps"]["copies"] == 0 and p["copy_gaps_per_step"]["host_late_ms"] == 0.0
    assert not list(tmp_path.glob("profile_*.json"))  # the raw trace goes; its gzipped copy is kept
    kept = sorted(tmp_path.glob("traces/*"))
    assert [k.name for k in kept] == ["profile_none_0.5_coded.json.gz"]
    with gzip.open(kept[0]) as f:
        assert "traceEvents" in json.load(f)


def test_the_trace_summary_counts_the_gpus_idle_time_and_the_hosts_waits():
    from bench.common import chrome_trace_overlap

    def ev(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        ev("kernel", "gemv", 0, 100), ev("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 50, 100),
        ev("kernel", "gemv", 300, 100),  # 150..300: nothing ran on the GPU
        ev("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 400, 20),
        ev("cuda_runtime", "cudaStreamSynchronize", 160, 130), ev("cuda_runtime", "cudaLaunchKernel", 0, 5),
        ev("cuda_runtime", "cudaEventSynchronize", 395, 25), {"ph": "i", "cat": "kernel", "ts": 5},
    ]}  # fmt: skip
    r = chrome_trace_overlap(trace)
    assert r["copies"] == 1 and r["copy_ms"] == pytest.approx(0.1)
    assert r["copy_concurrent_with_compute_ms"] == pytest.approx(0.05) and r[
        "overlap_share"
    ] == pytest.approx(0.5)
    assert r["gpu_span_ms"] == pytest.approx(0.42) and r["gpu_idle_ms"] == pytest.approx(0.15)
    assert r["host_sync_ms"] == pytest.approx(0.155) and r["compute_busy_ms"] == pytest.approx(0.2)
    assert chrome_trace_overlap({})["gpu_idle_ms"] == 0.0


def test_the_copy_gaps_split_the_copy_engines_idle_time_by_who_was_late():
    from bench.trace_gaps import copy_gaps

    def ev(cat, name, ts, dur, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}

    mb = 1 << 20
    h2d = "Memcpy HtoD (Pinned -> Device)"
    trace = {"traceEvents": [
        ev("cuda_runtime", "cudaMemcpyAsync", 0, 5, correlation=1), ev("gpu_memcpy", h2d, 10, 100, correlation=1, bytes=9 * mb),
        # issued at 250, after the first copy ended at 110: 140 us host-late, 100 of them in a sync
        ev("cuda_runtime", "cudaStreamSynchronize", 120, 100), ev("cuda_runtime", "cudaMemcpyAsync", 250, 5, correlation=2),
        ev("gpu_memcpy", h2d, 260, 100, correlation=2, bytes=9 * mb),  # then 10 us of dependency (launch)
        # issued at 300, while the second copy ran; it starts at 400: 40 us waiting on an event
        ev("cuda_runtime", "cudaMemcpyAsync", 300, 5, correlation=3), ev("gpu_memcpy", h2d, 400, 100, correlation=3, bytes=9 * mb),
        ev("cuda_runtime", "cudaMemcpyAsync", 310, 5, correlation=4),
        ev("gpu_memcpy", h2d, 500, 1, correlation=4, bytes=4096),  # a table upload: not an expert copy
        ev("kernel", "gemv", 0, 200), ev("kernel", "gemv", 450, 100),
    ]}  # fmt: skip
    g = copy_gaps(trace)
    assert (
        g["copies"] == 3 and g["span_ms"] == pytest.approx(0.49) and g["copy_busy_ms"] == pytest.approx(0.3)
    )
    assert g["host_late_ms"] == pytest.approx(0.14) and g["host_late_in_sync_ms"] == pytest.approx(0.1)
    assert g["dependency_ms"] == pytest.approx(0.05)
    assert g["host_late_calls"] == {"cudaStreamSynchronize": 0.1}
    # kernels idle 200..450 inside the span 10..500: copies ran 260..360 and 400..450 of it
    assert g["compute_idle_copying_ms"] == pytest.approx(0.15)
    assert g["compute_idle_no_copy_ms"] == pytest.approx(0.1)
    assert copy_gaps({})["copies"] == 0


def test_the_decode_bench_and_the_soak_parse_a_policy_by_the_same_rules():
    from bench import serve_soak
    from bench.decode_lib import sweep
    from bench.policy_names import split_policy

    assert sweep.split_policy is serve_soak.split_policy is split_policy
    assert split_policy("oracle+1") == ("oracle", 1) and split_policy("overprovision@6+2") == (
        "overprovision",
        2,
    )
    for bad in ("exact+0", "none+1", "exact+x", "exact@6+2"):
        with pytest.raises(ValueError):
            split_policy(bad)


def test_the_host_time_by_phase_is_a_token_s_median_over_runs():
    from bench.decode_lib.record import spread_note
    from bench.decode_lib.timing import host_phases
    from engine.runner.host_clock import PHASES, HostClock

    clock = HostClock()
    t = clock.lap("launch", 0.0)  # since the epoch: a large lap, then a small one
    assert clock.seconds["launch"] > 0 and clock.lap("route", t) >= t
    clock.steps = 4
    snap = clock.snapshot()
    assert snap["steps"] == 4 and set(snap["ms"]) == set(PHASES)
    clock.reset()
    assert clock.snapshot() == {"steps": 0, "ms": dict.fromkeys(PHASES, 0.0)}

    def run(steps, launch_ms, route_ms):
        ms = dict.fromkeys(PHASES, 0.0) | {"launch": launch_ms, "route": route_ms}
        return {"host": {"steps": steps, "ms": ms}}

    runs = [run(10, 20.0, 10.0), run(10, 40.0, 10.0), run(5, 15.0, 5.0), run(0, 0.0, 0.0)]
    got = host_phases(runs)  # per token: launch 2, 4, 3; route 1, 1, 1 (the run of no step left out)
    assert got["launch"] == pytest.approx(3.0) and got["route"] == pytest.approx(1.0)
    assert got["total"] == pytest.approx(4.0) and got["route_wait"] == 0.0
    assert host_phases([run(0, 0.0, 0.0), {}]) is None
    note = spread_note({"steps_by_run": [{"p50_ms": 1.0, "max_ms": 2.0, "over_2x_median": 0}],
                        "host_ms_per_token": got})  # fmt: skip
    assert "; host ms a token 4.00 (launch 3.00, read_copy 0.00" in note and "route 1.00" in note
