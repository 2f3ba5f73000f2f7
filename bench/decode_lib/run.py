"""One run of the decode benchmark from the CLI's arguments, its measurements in order (see
`bench/decode.py` for what each one is): the model, its predictors, the plain baseline, the sweep, the
batched runs, the prefill, the overlap profile, the ratios, the PNG. With `--routing twin:PATH` the
measurements after the plain baseline replay the twin's routing and predictions (`replay`), batch 1 and
batched, and the routing `none` recorded is checked against the artefact's.

Imports torch, `bench.common`, `engine.runner`, `engine.prefetch.kernel_bank`, `engine.frontend.heap` and the rest of this
package only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

from bench.common import active_bytes_per_token, device_bandwidth, device_name, pinned_bandwidth
from bench.decode_lib.baseline import plain_baseline
from bench.decode_lib.batched import batched_runs
from bench.decode_lib.model import PROMPT_TOKENS, DecodeText, build_bench, decode_text, prompt_sets
from bench.decode_lib.overlap import overlap_by_policy
from bench.decode_lib.plot import plot
from bench.decode_lib.recall import diagnose_recall
from bench.decode_lib.record import Record, add_ratios, header, log
from bench.decode_lib.replay import (
    DeviceReplay,
    ReplayedBank,
    ReplayRunner,
    TwinReplay,
    parse_routing,
    predictions_by_policy,
    replayed_routers,
    routing_check,
)
from bench.decode_lib.seams import BENCH_MAX_LEN
from bench.decode_lib.sweep import Deadline, Sweep, split_policy, sweep
from bench.decode_lib.timing import Workload, time_prefill
from bench.decode_lib.training import Bank, train_predictors
from engine.frontend.heap import freeze_heap
from engine.prefetch.kernel_bank import KernelBank, kernel_bank
from engine.runner.runner import ModelRunner


def run(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.deadline)  # building the model counts
    b = build_bench(args.preset, args.smoke, args.embed_std)
    om = b.om
    json_path = args.out / f"decode_{b.tag}.json"
    routing = args.work / f"routing_{b.tag}.json"
    routing.unlink(missing_ok=True)
    bw = pinned_bandwidth(256 << 20)["gb_per_s"] * 1e9 if b.cuda else None
    hbm = device_bandwidth()["gb_per_s"] * 1e9 if b.cuda else None
    active = active_bytes_per_token(om)
    record = Record(
        json_path, header(args, om, device_name(b.device), b.dtype, bw, hbm, active, PROMPT_TOKENS)
    )
    twin_path = parse_routing(args.routing)
    twin = TwinReplay(twin_path, om) if twin_path is not None else None  # checked against the model
    if twin is not None:
        record.data["routing"] = twin.label
    policies = [p for p in args.policies.split(",") if p]
    for p in policies:  # a bad name fails here, before the traces and the training
        try:
            split_policy(p)
        except ValueError as err:
            raise SystemExit(f"--policies: {err}") from None
        if twin is None and "+" in p and not p.startswith("oracle"):
            raise SystemExit(
                f"--policies {p}: lookahead predictions come from a twin replay (--routing twin:...)"
            )
    record.data["predictions_by_policy"] = predictions_by_policy(policies, record.data["routing"])

    prompts, traced, fresh = prompt_sets(args.prompts, args.collect_prompts, args.diagnose_recall)
    bank, record.data["predictors"] = train_predictors(
        om, b.tok, traced, args.work, args, args.out, b.tag, fresh
    )
    if args.predictor_kernel:  # MOE_PREDICTOR_KERNEL: wrapped here, under the twin's ReplayedBank
        bank = dataclasses.replace(bank, bank=kernel_bank(bank.bank, b.device, True))
    record.data["predictor_kernel"] = isinstance(bank.bank, KernelBank)
    record.write()
    if twin is None:
        text = decode_text(b.tok, prompts, args.runs, args.new_tokens, args.prefill_tokens)
    else:  # the artefact's own text: the replayed routing belongs to exactly the token decoded
        segs, long = (
            twin.segments(args.runs, PROMPT_TOKENS, args.new_tokens),
            twin.long_prompt(args.prefill_tokens),
        )
        text = DecodeText([(s.prompt, s.feed) for s in segs], long.prompt)
        record.data["replay"] = twin.describe(segs, long)
        record.data["decode"] += "; the text is the twin replay artefact's prompts"
    batches = [int(n) for n in args.batches.split(",") if n]

    if b.cuda and not args.no_plain:
        plain_baseline(om, text.segments, args.plain_tokens, batches, record)
        if twin is not None:  # the plain forward runs the model's own (random) routing
            record.data["plain"]["routing"] = "random (the plain forward is not replayed)"
            record.data.pop("agreement_with_plain", None)
            record.plain_tokens = None

    # --predictor-overlap sets the batch-1 runner's; the batched and ablation runners keep the engine's default.
    # Built here, before any replay patch: it fuses the routers.
    record.data["predictor_overlap"] = args.predictor_overlap
    runner = ModelRunner(om, rows=1, max_len=BENCH_MAX_LEN, predictor_overlap=args.predictor_overlap)
    with contextlib.ExitStack() as replaying:
        wrap = None
        if twin is not None:
            table = DeviceReplay(twin, b.device)
            starts = {tuple(s.prompt): s.start for s in [*segs, long]}
            replaying.enter_context(replayed_routers(om, table))
            ahead = {  # exact+d: the twin's lookahead predictions, issued d MoE layers ahead
                d: Bank(ReplayedBank(bank.bank, table, d), ReplayedBank(bank.fp32, table, d), bank.manifest | {"distance": d})
                for d in table.ahead
            }  # fmt: skip
            bank = Bank(ReplayedBank(bank.bank, table), ReplayedBank(bank.fp32, table), bank.manifest, ahead)
            wrap = lambda r: ReplayRunner(r, table, twin.tokens, starts)  # noqa: E731
        workload = Workload(runner, text.segments, wrap, args.eviction)
        if not args.no_gc_freeze:  # as a serving engine does once loaded (engine.frontend.heap)
            record.data["gc_freeze"] = freeze_heap()
            log(f"heap frozen: {record.data['gc_freeze']}")
        measure(args, b, workload, bank, text.long_prompt, batches, record, deadline, bw, twin is not None)
        if twin is not None and routing.exists():
            recorded = json.loads(routing.read_text())["layers"]
            record.data["replay"]["routing_check"] = check = routing_check(twin, segs, recorded)
            log(f"routing replay check (the routing `none` recorded against the artefact's): {check}")
    add_ratios(record.data)
    record.write()
    plot(record.data, args.out / f"decode_{b.tag}.png")
    log(f"wrote {json_path}")


def measure(
    args, b, workload: Workload, bank, long_prompt, batches, record, deadline, bw, twin: bool
) -> None:
    """Everything after the plain baseline, on the workload's runner (replaying the twin's routing with
    `twin`): the recall diagnosis, the sweep, the batched runs, the prefill, the overlap profile."""
    om = b.om
    routing = args.work / f"routing_{b.tag}.json"
    if args.diagnose_recall:
        record.data["recall_paths"] = diagnose_recall(workload, bank)
        record.write()
    fractions = [float(f) for f in args.fractions.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    segmented = args.segmented.split(",")
    hybrid = [p for p in args.hybrid.split(",") if p]
    sweep(
        Sweep(
            workload,
            bank,
            routing,
            bw,
            record,
            deadline,
            b.cuda,
            not args.no_ablations,
            tuple(args.full_cache_policies.split(",")),
            profile=frozenset(k for k in args.profile_configs.split(",") if k),
            work=args.work,
            keep_traces=args.keep_traces,
        ),
        fractions,
        policies,
        segmented,
        hybrid,
        [p for p in args.after_demand.split(",") if p],
        [p for p in args.coded.split(",") if p],
    )

    if batches and not deadline.passed():
        batched_runs(om, workload.segments, batches, record, wrap=workload.wrap, eviction=args.eviction)

    record.data["prefill"] = prefill = time_prefill(om, min(fractions), long_prompt, wrap=workload.wrap)
    log(
        f"prefill {prefill['prompt_tokens']} tokens @ {100 * prefill['fraction']:.0f}%: {prefill['tok_s_median']:.0f} tok/s"
    )
    record.write()

    if b.cuda and not args.no_profile and not deadline.passed():
        record.data["overlap"] = overlap_by_policy(workload, bank, args.work)
        record.write()
