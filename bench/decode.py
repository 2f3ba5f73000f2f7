"""Decode and prefill speed of the engine under every prefetch policy and cache size, against the plain
transformers forward, on a random-weight model of a real shape, on one GPU.

    python bench/decode.py --preset qwen3-30b-a3b --prompts .cache/mmlu --out bench/results

One run does everything on one GPU and reports medians of `--runs` runs with min and max:
1. builds the model on the device (experts in pinned host memory) and measures host->device and
   device-memory bandwidth;
2. collects routing traces over MMLU prompts spread over every subject (the last 80 prompts, whose text
   the decode runs feed, are never traced) and trains Arch-2 predictors on them (the model's own
   traces, a few epochs); with `--predictor-report`, both paper pairings with the full evaluation
   table (baselines included), as `bench/predictors_gpu.py` does;
3. the plain transformers forward (every expert on the GPU, transformers' default experts code,
   DynamicCache), batch 1 — skipped when the weights do not fit on the GPU;
4. the engine with every expert resident (one CUDA graph per step), its eager path, and the slot
   GEMV's torch fallback, with the HBM floor (active bytes / device bandwidth);
5. per cache size and policy: tokens/s, hit rate, stall ms per token, bytes per token, wasted prefetch,
   online recall, prediction latency, and the PCIe floor (bytes copied / host->device bandwidth +
   the resident time per token); `oracle` replays the routing recorded under `none`;
6. prefill tokens/s of a `--prefill-tokens` prompt at the smallest cache;
7. a profiler trace of a few decode steps: how much expert-copy time ran while compute kernels ran (`none` and
   `exact` at 50%; `--profile-configs` profiles any configuration after its runs, with the GPU's idle time and
   the host's time in synchronising calls per step).

Decode is teacher-forced: each step feeds the text's next token (a random-weight model's own greedy
text repeats one token, which would route every step to the same experts); each run decodes its own
stretch of text, the way a server sees different requests. The argmax of every step is recorded to
check that outputs never change across policies, cache sizes and paths.

Results: JSON (rewritten after every configuration, so a cut-off run keeps what it measured) and a
PNG of tokens/s against cache size, one line per policy. `--smoke` runs a shrunken shape on the CPU.
Every record and its title say which routing the numbers came from: `random` (the random-weight model's
own) or, with `--routing twin:PATH`, `twin-replayed (<artefact>, sha256 ...)`: the routers' top-k ids and
weights and the predictors' outputs are a routing twin's on the artefact's text, token by token
(`bench/decode_lib/replay.py`), batch 1 and batched, and the decode text is the artefact's.

This file only parses the flags; each measurement is a module of `bench/decode_lib` (its docstring lists
them), and `bench/decode_lib/seams.py` holds every way the run changes how the engine runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.decode_lib.run import run  # noqa: E402
from engine.api.config import EngineConfig  # noqa: E402
from engine.api.policies import EVICTIONS, POLICIES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--prompts", type=Path, default=Path("../shared/data/mmlu/test"))
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_decode"))
    ap.add_argument("--fractions", default="1.0,0.5,0.25")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--collect-prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=16000)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--predictor-hidden", type=int, default=2048)
    ap.add_argument("--predictor-report", action="store_true", help="both paper pairings, full evaluation")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument(
        "--embed-std", type=float, default=1.0, help="see build_synthetic (0.02 collapses routing)"
    )
    ap.add_argument("--no-plain", action="store_true", help="skip the plain transformers baseline")
    ap.add_argument("--plain-tokens", type=int, default=16, help="decode steps per run of the slow baseline")
    ap.add_argument(
        "--deadline", type=float, default=0.0, help="seconds; skip the remaining configs after it"
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--no-ablations",
        action="store_true",
        help="skip the eager and torch-GEMV runs with every expert resident and `exact` eager at 50%%",
    )
    ap.add_argument(
        "--batches", default="4,8", help="batch sizes of the throughput runs (resident and 50%%); empty: none"
    )
    ap.add_argument(
        "--diagnose-recall", action="store_true", help="online recall along every prediction path"
    )
    ap.add_argument(
        "--segmented",
        default="none,overprovision",
        help="policies also run with segmented steps (MOE_HOST_READS=false) below a full cache",
    )
    ap.add_argument(
        "--hybrid",
        default="",
        help="policies also run with hybrid misses (MOE_HYBRID_MISSES, segmented steps) below a full cache",
    )
    ap.add_argument(
        "--after-demand",
        default="",
        help="policies also run with segmented steps queueing lookahead copies behind each layer's demand "
        "copies (MOE_LOOKAHEAD_AFTER_DEMAND) below a full cache",
    )
    ap.add_argument(
        "--coded",
        default="",
        help="policies also run with coded expert copies (MOE_CODED_EXPERTS) below a full cache, streamed and "
        "(those also in --segmented) with segmented steps; those also in --after-demand also with both settings "
        "(variant coded-after-demand)",
    )
    ap.add_argument(
        "--profile-configs",
        default="",
        help="configurations to profile after their runs, e.g. exact+2@0.5/coded,none@0.5 (policy@fraction"
        "[/variant]): the GPU's idle time, the host's time in synchronising calls and the copies' overlap "
        "with compute, per step, in that configuration's summary (`profile`) and the log",
    )
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the heap to the garbage collector's full passes (a serving engine freezes it once loaded, "
        "engine.frontend.heap; each run's passes are in its summary's gc_by_run either way)",
    )
    ap.add_argument(
        "--keep-traces",
        type=Path,
        default=None,
        help="keep the --profile-configs traces in this folder, gzipped (profile_<policy>_<fraction>.json.gz)",
    )
    ap.add_argument(
        "--routing",
        default="random",
        help="random (the model's own), or twin:PATH to replay a twin_replay_<shape> artefact's routing and "
        "predictions (bench/decode_lib/replay.py)",
    )
    ap.add_argument(
        "--eviction",
        choices=EVICTIONS,
        default="lru",
        help="the expert caches' eviction order (MOE_EVICTION)",
    )
    ap.add_argument(
        "--full-cache-policies",
        default="none",
        help="the policies also run at a full cache (100%%): what predicting costs when nothing is missing",
    )
    ap.add_argument(
        "--predictor-kernel",
        action="store_true",
        help="the predictors of decode steps as one Triton kernel per layer (MOE_PREDICTOR_KERNEL; CUDA only)",
    )
    ap.add_argument(
        "--predictor-overlap",
        action=argparse.BooleanOptionalAction,
        default=EngineConfig().predictor_overlap,
        help="streamed steps run the predictors on a parallel branch of the step's graph (MOE_PREDICTOR_OVERLAP, "
        "the engine's default); --no-predictor-overlap: in line",
    )
    ap.add_argument("--smoke", action="store_true", help="a shrunken shape on the CPU, to test this script")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
