"""A serving soak: the product run the way users run it, on a random-weight checkpoint of a real shape.

    python bench/serve_soak.py --shape qwen3 --out bench/results          # H200, about 8 minutes
    python bench/serve_soak.py --shape tiny --device cpu --fractions 1.0,0.5 --policies none \
        --concurrency 1,4 --requests small --out /tmp/soak                # the CPU smoke test
    python bench/serve_soak.py --shape qwen3 --configs 0.5/none/segmented,0.5/exact+2/segmented \
        --after-demand --out bench/results                                # lookahead, the winning setup

1. `bench/soak_checkpoint.py` (a child process, so its GPU memory is freed) writes the checkpoint to
   `--work` and, when a configuration needs one, a quickly trained predictor bundle per lookahead
   distance; each is reused when its spec (the distance included) matches.
2. For each configuration of the plan (cache size x policy x decode steps) a `moe-prefetch serve`
   child is started and driven with the `openai` SDK and httpx at each concurrency level: mixed
   prompt lengths, chat, completions and the Responses API (about a quarter of the requests, each
   level's `requests_by_kind`), streamed or not, ~10% clients that disconnect mid-stream, bad
   bodies that must get a 4xx (`--hostile` adds those that killed the engine before), and greedy
   requests replayed from the concurrency-1 level to compare text with the same prompt served alone.
   Checks: no 5xx, no lost or truncated stream, /metrics counters against what clients saw, /health
   after, server memory flat across levels, a clean exit on SIGTERM. One long-prompt admission probe
   per configuration measures how much a 1,500-token prefill stalls running streams.
3. `serve_soak_<shape>.json` is rewritten after every configuration; the PNG and a last line
   `soak: N configurations, E errors` at the end. Exit status 1 when anything counted as an error.

Policies are `MOE_POLICY` names, or a lookahead policy `P+d` (`exact+2`; P any predictor policy, d >= 1):
served with `MOE_POLICY=P` and `MOE_PREDICTORS` set to a bundle trained to name MoE layer l+d's experts from
layer l's pre-attention input (`moe-prefetch train --distance d`), so the server prefetches d layers early.
`overprovision@m` (`overprovision@6+2`) also sets `MOE_OVERPROVISION=m`: each tap's top m, fewer than k or more.
Records keep the `exact+2` spelling. `--after-demand` gives every server `MOE_LOOKAHEAD_AFTER_DEMAND=true`
(segmented steps queue the lookahead copies behind the layer's own missing experts); the JSON records it
as `after_demand`, each configuration record its server's `MOE_*` settings (`server_env`) and the policy
and bundle the server reports on /metrics (`server_info`, a mismatch is an error), and each level record
the prefetch copies by target layer (`prefetch_issued_by_layer`: none for the first d layers of `P+d`).

A configuration `0.5/exact+2/segmented/coded` serves with `MOE_CODED_EXPERTS=true` (cache copies move each
expert's code and the GPU decodes it); its record has `coded: true`, and the server must report
`coded_copies="true"` on /metrics unless every expert is resident.

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

from bench.policy_names import policy_width, split_policy  # noqa: E402
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
    policy: str  # a MOE_POLICY name, or a lookahead one: "exact+2"
    steps: str  # "streamed" | "segmented"
    coded: bool = False  # MOE_CODED_EXPERTS: cache copies move the experts' code, decoded on the GPU

    @property
    def server_policy(self) -> str:
        """MOE_POLICY of the server: "exact" for "exact+2"."""
        return split_policy(self.policy)[0]

    @property
    def distance(self) -> int:
        """MoE layers ahead its bundle predicts (0: the layer itself)."""
        return split_policy(self.policy)[1]

    @property
    def name(self) -> str:
        size = "min" if self.fraction == "min" else f"{100 * float(self.fraction):g}%"
        return f"{size}/{self.policy}/{self.steps}" + ("/coded" if self.coded else "")

    def env(self, ckpt: Path, bundles: dict[int, Path], args, needs_bundle: bool) -> dict[str, str]:
        """The server's MOE_* settings; `bundles`: {distance: bundle} (the one of this distance is served)."""
        env = {
            "MOE_MODEL": str(ckpt),
            "MOE_DEVICE": args.device,
            "MOE_DTYPE": args.dtype,
            "MOE_POLICY": self.server_policy,
            "MOE_EVICTION": args.eviction,
            "MOE_LOOKAHEAD_AFTER_DEMAND": "true" if args.after_demand else "false",
            "MOE_CODED_EXPERTS": "true" if self.coded else "false",
            "MOE_MAX_RUNNING": str(args.max_running),
            "MOE_MAX_WAITING": str(max(64, 2 * max(args.concurrency))),
            "MOE_MAX_MODEL_LEN": str(args.max_model_len),
            "MOE_LOG_LEVEL": "info",
        }
        if self.fraction == "min":
            env["MOE_EXPERT_CACHE_GB"] = MIN_CACHE_GB
        else:
            env["MOE_EXPERT_CACHE_FRACTION"] = self.fraction
        width = policy_width(self.policy)
        if width is not None:
            env["MOE_OVERPROVISION"] = str(width)
        if needs_bundle and bundles.get(self.distance) is not None:
            env["MOE_PREDICTORS"] = str(bundles[self.distance])
        if self.steps == "segmented":
            env["MOE_HOST_READS"] = "false"
        else:
            env["MOE_HOST_READS"] = "true"
            env["MOE_STREAM_MISS_MB"] = "0"
        return env


def parse_conf(text: str) -> Conf:
    """`0.5/exact+2/segmented`, or with `/coded` after it (MOE_CODED_EXPERTS=true); ValueError otherwise."""
    parts = text.split("/")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "coded"):
        raise ValueError(f"{text!r}: a configuration is FRACTION/POLICY/STEPS, optionally followed by /coded")
    if parts[2] not in ("streamed", "segmented"):
        raise ValueError(f"{text!r}: the steps are streamed or segmented")
    split_policy(parts[1])
    return Conf(*parts[:3], coded=len(parts) == 4)


def make_plan(args) -> list[Conf]:
    fr, po, st = args.fractions, args.policies, args.steps
    if args.configs:  # an explicit list, in its order: fraction/policy/steps[/coded],...
        return [parse_conf(c) for c in args.configs.split(",")]
    if args.plan == "cross":
        return [Conf(f, p, s) for f in fr for p in po for s in st]
    plan = [Conf(*c) for c in DEFAULT_PLAN if c[0] in fr and c[1] in po and c[2] in st]
    for p in po:  # a policy the default plan lacks (exact+2, top1) runs where its base policy does there
        if not any(c.policy == p for c in plan):
            base = split_policy(p)[0]
            like = [Conf(f, p, s) for f, q, s in DEFAULT_PLAN if q == base and f in fr and s in st]
            plan += like or [Conf(f, p, st[0]) for f in fr]
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


def build(args, run: Run, texts, distances: list[int], timeout: float) -> tuple[Path, dict[int, Path], dict]:
    """The checkpoint and a bundle per lookahead distance in `distances` (none for []) via
    `bench/soak_checkpoint.py` in a child process: (checkpoint, {distance: bundle}, its summary)."""
    from bench.soak_checkpoint import bundle_path

    tag = f"{args.shape}-l{args.layers}-{args.dtype}-e{args.embed_std:g}"
    ckpt, base = args.work / tag, args.work / f"{tag}-predictors"
    bundles = {d: bundle_path(base, d) for d in distances}
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = args.work / f"{tag}-prompts.json"
    prompts.write_text(json.dumps((texts.short[:24] + texts.medium[:24]) or ["hello"]))
    cmd = [
        sys.executable, str(ROOT / "bench" / "soak_checkpoint.py"), "--shape", args.shape,
        "--layers", str(args.layers), "--dtype", args.dtype, "--device", args.device,
        "--embed-std", str(args.embed_std), "--out", str(ckpt), "--prompts", str(prompts),
    ]  # fmt: skip
    if distances:
        cmd += ["--bundle", str(base), "--distances", ",".join(map(str, distances))]
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
    return ckpt, bundles, summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=tuple(DEFAULT_LAYERS), default="qwen3")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: 12; tiny: 4)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--embed-std", type=float, default=1.0, help="std of the random token embeddings")
    ap.add_argument("--fractions", default="1.0,0.5,0.25,min")
    ap.add_argument(
        "--policies",
        default="none,exact,overprovision",
        help="MOE_POLICY names or lookahead ones (exact+2: exact with a bundle predicting 2 MoE layers ahead)",
    )
    ap.add_argument(
        "--eviction", choices=("lru", "lfu"), default="lru", help="MOE_EVICTION of every server (one per run)"
    )
    after = (
        "every server gets MOE_LOOKAHEAD_AFTER_DEMAND=true: segmented steps queue lookahead copies behind the "
        "layer's own missing experts (one per run)"
    )
    ap.add_argument("--after-demand", action=argparse.BooleanOptionalAction, default=False, help=after)
    ap.add_argument("--steps", default="streamed,segmented")
    ap.add_argument(
        "--plan", choices=("default", "cross"), default="default", help="cross: every combination"
    )
    ap.add_argument(
        "--configs",
        default="",
        help="explicit configurations in order, e.g. 0.5/exact/streamed,min/none/streamed,0.5/exact+2/segmented;"
        " /coded after one serves it with MOE_CODED_EXPERTS=true (0.5/exact+2/segmented/coded)",
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
    return args


def check_names(args, policies: list[str], steps: list[str]) -> None:
    """SystemExit naming the policies and step kinds the soak cannot serve (a lookahead distance needs a
    predictor policy, and fewer MoE layers than the model has)."""
    from engine.api.policies import POLICIES, PREDICTOR_POLICIES

    bad = []
    for p in policies:
        try:
            base, ahead = split_policy(p)
        except ValueError:
            bad.append(p)
            continue
        if base not in POLICIES or (ahead and (base not in PREDICTOR_POLICIES or ahead >= args.layers)):
            bad.append(p)
    bad += [s for s in steps if s not in ("streamed", "segmented")]
    if bad:
        raise SystemExit(
            f"unknown policy or steps: {sorted(set(bad))} (policies: {', '.join(POLICIES)}, or a predictor "
            f"policy +d for d = 1 .. {args.layers - 1}: {', '.join(p + '+1' for p in PREDICTOR_POLICIES)}, ...)"
        )


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    from bench.soak_run import run_plan
    from bench.soak_server import gpu_name
    from engine.api.policies import PREDICTOR_POLICIES

    check_names(args, args.policies, args.steps)
    try:
        plan = make_plan(args)
    except ValueError as err:  # a --configs entry that is not fraction/policy/steps[/coded]
        raise SystemExit(f"--configs: {err}") from None
    check_names(args, [c.policy for c in plan], [c.steps for c in plan])
    distances = sorted({c.distance for c in plan if c.server_policy in PREDICTOR_POLICIES})
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
        "after_demand": args.after_demand,
        "plan": [c.__dict__ | {"name": c.name} for c in plan],
        "requests_per_level": requests_per_level(args.requests, args.concurrency),
        "records": [],
    }
    run = Run(args.out, f"serve_soak_{args.shape}", info, t_start)
    run.say(
        f"plan: {', '.join(c.name for c in plan)}; levels {args.concurrency}; prompts from {texts.source}"
    )
    try:
        ckpt, bundles, summary = build(
            args, run, texts, distances, timeout=max(30.0, deadline - time.monotonic())
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
        bundles=bundles,
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
