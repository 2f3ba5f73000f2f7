"""One run of the decode benchmark from the CLI's arguments, its measurements in order (see
`bench/decode.py` for what each one is): the model, its predictors, the plain baseline, the sweep, the
batched runs, the prefill, the overlap profile, the ratios, the PNG.

Imports torch, `bench.common`, `engine.runner` and the rest of this package only.
"""

from __future__ import annotations

from bench.common import active_bytes_per_token, device_bandwidth, device_name, pinned_bandwidth
from bench.decode_lib.baseline import plain_baseline
from bench.decode_lib.batched import batched_runs
from bench.decode_lib.model import PROMPT_TOKENS, build_bench, decode_text, prompt_sets
from bench.decode_lib.overlap import overlap_by_policy
from bench.decode_lib.plot import plot
from bench.decode_lib.recall import diagnose_recall
from bench.decode_lib.record import Record, add_ratios, header, log
from bench.decode_lib.seams import BENCH_MAX_LEN
from bench.decode_lib.sweep import Deadline, Sweep, sweep
from bench.decode_lib.timing import Workload, time_prefill
from bench.decode_lib.training import train_predictors
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

    prompts, traced, fresh = prompt_sets(args.prompts, args.collect_prompts, args.diagnose_recall)
    bank, record.data["predictors"] = train_predictors(
        om, b.tok, traced, args.work, args, args.out, b.tag, fresh
    )
    record.write()
    text = decode_text(b.tok, prompts, args.runs, args.new_tokens, args.prefill_tokens)
    batches = [int(n) for n in args.batches.split(",") if n]

    if b.cuda and not args.no_plain:
        plain_baseline(om, text.segments, args.plain_tokens, batches, record)

    workload = Workload(ModelRunner(om, rows=1, max_len=BENCH_MAX_LEN), text.segments)
    if args.diagnose_recall:
        record.data["recall_paths"] = diagnose_recall(workload, bank)
        record.write()
    fractions = [float(f) for f in args.fractions.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    segmented = args.segmented.split(",")
    sweep(Sweep(workload, bank, routing, bw, record, deadline, b.cuda), fractions, policies, segmented)

    if batches and not deadline.passed():
        batched_runs(om, text.segments, batches, record)

    record.data["prefill"] = prefill = time_prefill(om, min(fractions), text.long_prompt)
    log(
        f"prefill {prefill['prompt_tokens']} tokens @ {100 * prefill['fraction']:.0f}%: {prefill['tok_s_median']:.0f} tok/s"
    )
    record.write()

    if b.cuda and not args.no_profile and not deadline.passed():
        record.data["overlap"] = overlap_by_policy(workload, bank, args.work)
        record.write()
    add_ratios(record.data)
    record.write()
    plot(record.data, args.out / f"decode_{b.tag}.png")
    log(f"wrote {json_path}")
