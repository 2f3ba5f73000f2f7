"""A serving soak: the product run the way users run it, on a random-weight checkpoint of a real shape.

    python bench/serve_soak.py --shape qwen3 --out bench/results          # H200, about 8 minutes
    python bench/serve_soak.py --shape tiny --device cpu --fractions 1.0,0.5 --policies none \
        --concurrency 1,4 --requests small --out /tmp/soak                # the CPU smoke test

1. `bench/soak_checkpoint.py` (a child process, so its GPU memory is freed) writes the checkpoint to
   `--work` and, when a configuration needs one, a quickly trained predictor bundle; both are reused
   when their spec matches.
2. For each configuration of the plan (cache size x policy x decode steps) a `moe-prefetch serve`
   child is started and driven with the `openai` SDK and httpx at each concurrency level: mixed
   prompt lengths, chat and completions, streamed or not, ~10% clients that disconnect mid-stream, bad
   bodies that must get a 4xx (`--hostile` adds those that killed the engine before), and greedy
   requests replayed from the concurrency-1 level to compare text with the same prompt served alone.
   Checks: no 5xx, no lost or truncated stream, /metrics counters against what clients saw, /health
   after, server memory flat across levels, a clean exit on SIGTERM. One long-prompt admission probe
   per configuration measures how much a 1,500-token prefill stalls running streams.
3. `serve_soak_<shape>.json` is rewritten after every configuration; the PNG and a last line
   `soak: N configurations, E errors` at the end. Exit status 1 when anything counted as an error.

Time is bounded by `--deadline`: no configuration starts that the slowest one so far would not finish
in time, a level stops launching at its budget, and each level is cut to what the last level's
throughput can serve in the time left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_record import Run  # noqa: E402
from bench.soak_workload import Workload, find_data, load_texts, long_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# every cache size first, then the other step kind and the policies: a run cut by its deadline still
# covers each size
DEFAULT_PLAN = (
    ("1.0", "none", "streamed"),
    ("0.5", "none", "streamed"),
    ("0.25", "none", "streamed"),
    ("min", "none", "streamed"),
    ("0.5", "none", "segmented"),
    ("0.5", "exact", "streamed"),
    ("0.5", "overprovision", "streamed"),
    ("0.25", "overprovision", "segmented"),
)
DEFAULT_REQUESTS = {1: 8, 8: 24, 32: 48, 64: 64}
DEFAULT_LAYERS = {"qwen3": 12, "deepseek": 12, "tiny": 4}
MIN_CACHE_GB = (
    "1e-9"  # below one expert: the cache gets its smallest size, top-k slots (MOE_EXPERT_CACHE_GB > 0)
)


@dataclass(frozen=True)
class Conf:
    fraction: str  # "1.0", "0.5", ..., or "min"
    policy: str
    steps: str  # "streamed" | "segmented"

    @property
    def name(self) -> str:
        size = "min" if self.fraction == "min" else f"{100 * float(self.fraction):g}%"
        return f"{size}/{self.policy}/{self.steps}"

    def env(self, ckpt: Path, bundle: Path | None, args, needs_bundle: bool) -> dict[str, str]:
        env = {
            "MOE_MODEL": str(ckpt),
            "MOE_DEVICE": args.device,
            "MOE_DTYPE": args.dtype,
            "MOE_POLICY": self.policy,
            "MOE_EVICTION": args.eviction,
            "MOE_MAX_RUNNING": str(args.max_running),
            "MOE_MAX_WAITING": str(max(64, 2 * max(args.concurrency))),
            "MOE_MAX_MODEL_LEN": str(args.max_model_len),
            "MOE_LOG_LEVEL": "info",
        }
        if self.fraction == "min":
            env["MOE_EXPERT_CACHE_GB"] = MIN_CACHE_GB
        else:
            env["MOE_EXPERT_CACHE_FRACTION"] = self.fraction
        if needs_bundle and bundle is not None:
            env["MOE_PREDICTORS"] = str(bundle)
        if self.steps == "segmented":
            env["MOE_HOST_READS"] = "false"
        else:
            env["MOE_HOST_READS"] = "true"
            env["MOE_STREAM_MISS_MB"] = "0"
        return env


def make_plan(args) -> list[Conf]:
    fr, po, st = args.fractions, args.policies, args.steps
    if args.configs:  # an explicit list, in its order: fraction/policy/steps,...
        return [Conf(*c.split("/")) for c in args.configs.split(",")]
    if args.plan == "cross":
        return [Conf(f, p, s) for f in fr for p in po for s in st]
    plan = [Conf(*c) for c in DEFAULT_PLAN if c[0] in fr and c[1] in po and c[2] in st]
    covered = {c.fraction for c in plan}
    plan += [Conf(f, p, st[0]) for f in fr if f not in covered for p in po]  # fractions the default lacks
    return plan


def requests_per_level(arg: str, levels: list[int]) -> dict[int, int]:
    if arg == "default":
        return {c: DEFAULT_REQUESTS.get(c, max(8, c)) for c in levels}
    if arg == "small":
        return {c: max(4, c) for c in levels}
    parts = [int(x) for x in arg.split(",")]
    if len(parts) == 1:
        return {c: parts[0] for c in levels}
    if len(parts) != len(levels):
        raise SystemExit(f"--requests: {len(parts)} counts for {len(levels)} concurrency levels")
    return dict(zip(levels, parts, strict=True))


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "openai", "httpx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cutter(ckpt: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))

    def cut(text: str, n: int) -> str:
        return tok.decode(tok.encode(text).ids[:n])

    return cut


def build(args, run: Run, texts, needs_bundle: bool, timeout: float) -> tuple[Path, Path | None, dict]:
    """The checkpoint (and bundle) via `bench/soak_checkpoint.py` in a child process."""
    tag = f"{args.shape}-l{args.layers}-{args.dtype}-e{args.embed_std:g}"
    ckpt, bundle = args.work / tag, (args.work / f"{tag}-predictors" if needs_bundle else None)
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = args.work / f"{tag}-prompts.json"
    prompts.write_text(json.dumps((texts.short[:24] + texts.medium[:24]) or ["hello"]))
    cmd = [
        sys.executable, str(ROOT / "bench" / "soak_checkpoint.py"), "--shape", args.shape,
        "--layers", str(args.layers), "--dtype", args.dtype, "--device", args.device,
        "--embed-std", str(args.embed_std), "--out", str(ckpt), "--prompts", str(prompts),
    ]  # fmt: skip
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    log = args.out / f"serve_soak_{args.shape}_build.log"
    with log.open("w") as fh:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"checkpoint build failed ({res.returncode}):\n{log.read_text()[-3000:]}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    run.say(f"checkpoint {ckpt} ({summary.get('checkpoint_gb')} GB) in {summary.get('total_s')}s: {summary}")
    return ckpt, bundle, summary


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=tuple(DEFAULT_LAYERS), default="qwen3")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 12; tiny: 4)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--embed-std", type=float, default=1.0, help="std of the random token embeddings")
    ap.add_argument("--fractions", default="1.0,0.5,0.25,min")
    ap.add_argument("--policies", default="none,exact,overprovision")
    ap.add_argument(
        "--eviction", choices=("lru", "lfu"), default="lru", help="MOE_EVICTION of every server (one per run)"
    )
    ap.add_argument("--steps", default="streamed,segmented")
    ap.add_argument(
        "--plan", choices=("default", "cross"), default="default", help="cross: every combination"
    )
    ap.add_argument(
        "--configs",
        default="",
        help="explicit configurations in order, e.g. 0.5/exact/streamed,min/none/streamed",
    )
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--requests", default="default", help="per level: default | small | N | N1,N2,...")
    hostile = "also send the bodies that killed the engine before (default: on for cuda)"
    ap.add_argument("--hostile", action=argparse.BooleanOptionalAction, default=None, help=hostile)
    ap.add_argument(
        "--deadline",
        type=float,
        default=480.0,
        help="seconds for the whole run (configurations stop starting before it)",
    )
    ap.add_argument("--level-seconds", type=float, default=15.0, help="launch budget of one level")
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--start-timeout", type=float, default=240.0)
    ap.add_argument("--max-running", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--data", type=Path, default=None, help="prompt data (default: <repo>/../shared/data)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "serve_soak", help="checkpoints, bundles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--server-wrapper",
        default="",
        help="a command the server runs under, e.g. 'compute-sanitizer --tool memcheck --log-file F'",
    )
    args = ap.parse_args(argv)
    args.layers = args.layers or DEFAULT_LAYERS[args.shape]
    args.fractions = args.fractions.split(",")
    args.policies = args.policies.split(",")
    args.steps = args.steps.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.hostile = args.device.startswith("cuda") if args.hostile is None else args.hostile
    from bench.soak_run import run_plan
    from bench.soak_server import gpu_name
    from engine.api.policies import POLICIES, PREDICTOR_POLICIES

    bad = [p for p in args.policies if p not in POLICIES] + [
        s for s in args.steps if s not in ("streamed", "segmented")
    ]
    if bad:
        raise SystemExit(f"unknown policy or steps: {bad}")
    plan = make_plan(args)
    needs_bundle = any(c.policy in PREDICTOR_POLICIES for c in plan)
    deadline = t_start + args.deadline
    data = find_data(ROOT, args.data)
    texts = load_texts(ROOT, data)
    info = {
        "kind": "serve_soak",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.node(),
        "gpu": gpu_name() if args.device.startswith("cuda") else None,
        "versions": _versions(),
        "shape": args.shape,
        "dtype": args.dtype,
        "float32": args.dtype == "float32",
        "device": args.device,
        "routing": f"random weights (token embeddings std {args.embed_std:g}, every other weight std 0.02)",
        "prompts": texts.source,
        "hostile": args.hostile,
        "eviction": args.eviction,
        "plan": [c.__dict__ | {"name": c.name} for c in plan],
        "requests_per_level": requests_per_level(args.requests, args.concurrency),
        "records": [],
    }
    run = Run(args.out, f"serve_soak_{args.shape}", info, t_start)
    run.say(
        f"plan: {', '.join(c.name for c in plan)}; levels {args.concurrency}; prompts from {texts.source}"
    )
    try:
        ckpt, bundle, summary = build(
            args, run, texts, needs_bundle, timeout=max(30.0, deadline - time.monotonic())
        )
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        run.put("build_error", str(err)[-3000:])
        run.say(f"soak: 0 configurations, 1 errors ({str(err)[:300]})")
        return 1
    run.put("checkpoint", summary, phase="build")
    cut = _cutter(ckpt)
    workload = Workload(
        texts, cut, seed=args.seed, vocab_size=int(summary["config"]["vocab_size"]), hostile=args.hostile
    )
    ctx = dict(
        ckpt=ckpt,
        bundle=bundle,
        long=long_prompt(texts, cut),
        predictor_policies=PREDICTOR_POLICIES,
        requests=info["requests_per_level"],
    )
    configs, errors = asyncio.run(run_plan(args, run, plan, workload, ctx, deadline))
    from bench.soak_report import plot

    title = f"serve soak, {args.shape} shape, {args.dtype}, {info['gpu'] or args.device}"
    png = plot(run.data["records"], title, args.out / f"serve_soak_{args.shape}.png")
    run.put("summary", {"configurations": configs, "errors": errors, "png": str(png) if png else None,
                        "wall_s": round(time.monotonic() - t_start, 1)})  # fmt: skip
    run.say(f"soak: {configs} configurations, {errors} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
