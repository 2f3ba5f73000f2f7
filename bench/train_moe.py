"""Train a small MoE LM from scratch, trace its routing, train and evaluate pre-attention predictors (issue #7).

    # the built-in model (one H100, < 10 min): $OUT/builtin_checkpoint.tar.gz + train_moe_builtin.{json,md,png,log}
    python bench/train_moe.py --size builtin --data .cache/data --out $OUT
    # the bench model (one H100, < 10 min): $OUT/train_moe_bench.{json,md,png,log}
    python bench/train_moe.py --size bench --data .cache/data --out $OUT
    # CPU smoke test of every step at toy size (< 2 min)
    python bench/train_moe.py --smoke --out /tmp/train_moe_smoke
    # merge bench/results/train_moe_{builtin,bench}.json into bench/results/accuracy.{md,json,png} (CPU)
    python bench/train_moe.py --report

Steps, each written to the run's JSON as soon as it is done (a run cut off keeps what it made):
1. tokenise the Gutenberg training books (+ a chat-formatted stream of paragraph pairs), Gutenberg-valid and
   WikiText-2 valid/test with the committed built-in tokenizer (bench/lm_data.py);
2. train a Qwen3-MoE from scratch for `--minutes` of wall clock with the router's load-balancing loss on,
   then measure held-out perplexity and bits per byte (bench/lm_train.py);
3. save it as a bf16 checkpoint and reload it in float32 (every later step sees the saved weights); the built-in
   size packs the folder into builtin_checkpoint.tar.gz at once and again at the end (bench/builtin_pack.py);
4. trace its routing over MMLU test questions (shuffled, seeded; `--max-samples` tokens) and over the chat
   prompt sets with the chat template (the out-of-domain check);
5. routing statistics (expert-usage entropy, consecutive-token reuse) against random-weight twins (the same
   config and seed, untrained; as initialised, and with std-1 token embeddings), on the same prompts
   (bench/routing_stats.py);
6. predictors of both of the paper's pairings (Arch 1 + ranking-aware BCE, Arch 2 + weighted BCE) with
   predictors.train.train_bank, epochs fitted to the time left, and predictors.evaluate on the held-out MMLU
   prompts (with the router, cross-layer and frequency-prior baselines) and on the chat prompts;
7. built-in only: the better bundle (held-out recall@k) goes into the checkpoint folder with 48 held-out MMLU
   prompts and the recall it reaches on them (traced on the CPU, as the shipped-artefact test does).

Sizes (model shapes in bench/lm_train.py; the built-in shape is engine.model.builtin.builtin_config):
- builtin: 6 layers, hidden 256, 16 experts (width 64) top-2, 6.98 M parameters; 64 x 1024-token rows per
  step, peak lr 3e-3; 4.5 min; predictors of hidden 256 (the committed bundle stays small).
- bench: 12 layers, hidden 512, 64 experts (width 256) top-6 (DeepSeek-V2-Lite's routing), 313.9 M parameters,
  40.3 M active; 32 x 1024-token rows per step, peak lr 1.5e-3; 5 min; predictors of hidden 2048 (the paper's).
Both: AdamW betas (0.9, 0.95), weight decay 0.1 on matrices, clip 1.0, 100 warmup steps then a cosine to 10%
over the wall-clock budget, bf16 autocast, SDPA, aux-loss coefficient 0.01, 10% of rows chat-formatted.
Predictors: batch 2048, lr 1.5e-3, the rest as predictors.train (10% of prompts held out, early stopping).
"""

from __future__ import annotations

import time

START = time.monotonic()  # the time budget counts from here (Python start-up comes just before)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sized(args):
    """The Size for --size/--smoke with the command line's overrides applied."""
    from bench.lm_train import size_named

    size = size_named(args.size, args.smoke)
    if args.max_samples:
        size = dataclasses.replace(
            size, max_samples=args.max_samples, chat_samples=min(size.chat_samples, args.max_samples)
        )
    if args.minutes is not None:
        size = dataclasses.replace(size, minutes=args.minutes)
    types = {f.name: f.type for f in dataclasses.fields(size.plan)}
    overrides = {}
    for item in args.plan:
        key, _, value = item.partition("=")
        if types.get(key) not in ("int", "float"):
            raise SystemExit(f"--plan {item}: not a number field of TrainPlan (bench/lm_train.py)")
        overrides[key] = int(value) if types[key] == "int" else float(value)
    return dataclasses.replace(size, plan=dataclasses.replace(size.plan, **overrides))


def greedy_samples(model, tokenizer, device) -> list[dict]:
    """Greedy continuations of a plain and a chat prompt (is the text English-like?)."""
    import torch

    chat = [{"role": "user", "content": "Tell me about the sea."}]
    prompts = [
        ("plain", "It was a dark and stormy night, and"),
        ("chat", tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)),
    ]
    out = []
    for kind, text in prompts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
        with torch.no_grad():
            gen = model.generate(
                ids,
                max_new_tokens=60,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        text_out = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=False)
        out.append({"kind": kind, "prompt": text, "output": text_out})
    return out


def train_and_save(run, args, size, corpus, tok, device, work: Path) -> Path:
    """Steps 2 and 3: build, train, measure perplexity, sample, save the bf16 checkpoint (and pack it)."""
    import torch

    from bench.builtin_pack import TARBALL, attribution, pack, save_checkpoint
    from bench.lm_experts import choose_experts_implementation
    from bench.lm_train import Windows, build_model, heldout_windows, param_counts, perplexity, train_lm

    plan = size.plan
    model = build_model(size, len(tok), device, args.seed)
    impl = choose_experts_implementation(model, device)
    run.say(f"model: {param_counts(model)}; experts: {impl}")
    info = {"config": size.config, "vocab_size": len(tok), "params": param_counts(model), **impl}
    run.put("model", info, phase="build")
    windows = Windows(corpus.books, corpus.chat, plan.seq_len, device, args.seed)
    gv = corpus.heldout["gutenberg_valid"]
    n_sel = min(plan.select_windows * plan.seq_len, gv.size // 2)  # selection slice: the tail
    select = heldout_windows(gv[gv.size - n_sel :], plan.seq_len)
    report = train_lm(model, windows, select, corpus.bytes_per_token, plan, size.minutes, device, say=run.say)
    del windows
    streams = {"gutenberg_valid": gv[: gv.size - n_sel]}
    streams.update({k: v for k, v in corpus.heldout.items() if k.startswith("wikitext")})
    ppl = {
        k: perplexity(model, s, corpus.bytes_per_token, plan.seq_len, device, batch=plan.micro_batch)
        for k, s in streams.items()
    }
    for k, v in ppl.items():
        run.say(
            f"held-out {k}: ppl {v.get('ppl', float('nan')):.2f}, {v.get('bits_per_byte', float('nan')):.3f} bits/byte"
        )
    run.put(
        "lm", {"train": report, "perplexity": ppl, "selection_windows": int(select.shape[0])}, phase="train"
    )
    run.put("samples", greedy_samples(model, tok, device))
    for s in run.data["samples"]:
        run.say(f"sample ({s['kind']}): {s['output']!r}")

    ckpt = work / "checkpoint"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    save_checkpoint(model, ckpt)
    keep = ("size", "command", "device", "versions", "started", "seed", "data", "model", "samples")
    training = {k: run.data[k] for k in keep}
    training["lm"] = {**run.data["lm"], "train": {k: v for k, v in report.items() if k != "curve"}}
    (ckpt / "training.json").write_text(json.dumps(training, indent=1, default=str))
    if size.pack:
        (ckpt / "ATTRIBUTION.md").write_text(attribution(corpus.train_books, corpus.stats))
        run.put("pack", pack(ckpt, args.out / TARBALL))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ckpt


def run_pipeline(args) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from bench.builtin_pack import TARBALL, pack
    from bench.lm_data import chat_prompts, load_corpus, mmlu_prompts
    from bench.lm_train import build_model
    from bench.predictor_steps import ship_bundle, train_pairs
    from bench.routing_stats import routing_stats
    from bench.run_record import Run
    from engine.model.builtin import builtin_tokenizer
    from predictors.collect import collect
    from predictors.traces import TraceSet

    size = sized(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    deadline = START + args.budget_minutes * 60
    work = args.work or Path(tempfile.mkdtemp(prefix=f"train_moe_{size.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    name = f"train_moe_{size.name}" + ("_smoke" if args.smoke else "")
    info = {
        "size": size.name,
        "smoke": args.smoke,
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seed": args.seed,
    }
    run = Run(args.out, name, info, START)
    run.say(
        f"{name} on {info['device']}; work dir {work}; budget {args.budget_minutes} min, training {size.minutes} min"
    )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # 1. data
    corpus = load_corpus(
        args.data, max_train_chars=args.train_chars, max_heldout_chars=args.heldout_chars, seed=args.seed
    )
    run.say(f"tokenised: {json.dumps(corpus.stats)}")
    run.put("data", {**corpus.stats, "data_dir": str(args.data)}, phase="data")

    # 2, 3. train, save; every later step sees the saved weights, in plain float32 (as the CPU serves them)
    tok = builtin_tokenizer()
    ckpt = train_and_save(run, args, size, corpus, tok, device, work)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(device).eval()
    model.set_experts_implementation("eager")  # the engine's offloaded experts follow the eager loop's math
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    run.put("checkpoint", {"dir": str(ckpt), "bytes": ckpt_bytes}, phase="save")

    # 4. traces
    batch = 32 if cuda else 4
    mmlu = mmlu_prompts(args.data, args.seed)
    kw = {"batch_size": batch, "progress": False, "resume": False}
    collect(model, tok, mmlu, work / "traces_mmlu", max_samples=size.max_samples, **kw)
    traces = TraceSet(work / "traces_mmlu")
    chats, used = chat_prompts(args.data)
    collect(model, tok, chats, work / "traces_chat", max_samples=size.chat_samples, chat_template=True, **kw)
    chat_traces = TraceSet(work / "traces_chat")
    run.say(f"traces: MMLU {traces.summary()}, chat {chat_traces.summary()}")
    run.put(
        "traces", {"mmlu": traces.summary(), "chat": {**chat_traces.summary(), "files": used}}, phase="traces"
    )

    # 5. routing structure vs random-weight twins (same config and seed, untrained), on the same prompts:
    #    as initialised for training, and with std-1 token embeddings (engine.model.loader.build_synthetic's fix for
    #    the routing collapse of a deep random model)
    ids = torch.arange(size.twin_prompts)
    routing = {"trained": routing_stats(traces, ids)}
    for side, embed_std in (("random", None), ("random_embed_std1", 1.0)):
        twin = build_model(size, len(tok), device, args.seed).eval()
        twin.set_experts_implementation("eager")
        if embed_std is not None:
            with torch.no_grad():
                twin.get_input_embeddings().weight.normal_(0.0, embed_std)
        collect(twin, tok, mmlu[: size.twin_prompts], work / f"traces_{side}", **kw)
        del twin
        routing[side] = routing_stats(TraceSet(work / f"traces_{side}"), ids)
    for side, stats in routing.items():
        run.say(f"routing ({side}): {json.dumps(stats['mean'])}")
    run.put("routing", routing, phase="routing")

    # 6. predictors, 7. the shipped bundle (built-in only)
    reserve = 30.0 + 1.5 * traces.num_layers + (25.0 if size.pack else 0.0)  # evaluation, shipping, report
    results = train_pairs(
        run,
        traces,
        chat_traces,
        hidden=size.predictor_hidden,
        work=work,
        device=str(device),
        deadline=deadline,
        reserve=reserve,
        seed=args.seed,
        epoch_cap=args.predictor_epochs,
        latency_iters=20 if args.smoke else 200,
    )
    if size.pack and results:
        ship_bundle(run, results, traces, mmlu, model, tok, ckpt, work)
        run.put("pack", pack(ckpt, args.out / TARBALL), phase="ship")
        if not run.data["pack"]["fits"]:
            run.say(
                f"WARNING: {TARBALL} has {run.data['pack']['bytes']} bytes, more than the 16 MiB that come back"
            )
    finish(run)


def finish(run) -> None:
    from bench.accuracy_plot import plot_runs
    from bench.accuracy_report import render_markdown

    run.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    run.data["wall_seconds"] = round(time.monotonic() - START, 1)
    run.write()
    (run.out / f"{run.name}.md").write_text(render_markdown({run.data["size"]: run.data}))
    plot_runs({run.data["size"]: run.data}, run.out / f"{run.name}.png")
    run.say(f"done in {run.data['wall_seconds']:.0f} s: {sorted(p.name for p in run.out.iterdir())}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:11]),
    )
    ap.add_argument("--size", choices=("builtin", "bench"), default="builtin")
    ap.add_argument(
        "--smoke", action="store_true", help="toy sizes on the CPU: every step end to end in ~30 s"
    )
    ap.add_argument(
        "--report", action="store_true", help="merge run JSONs into accuracy.{md,json,png}; no training"
    )
    ap.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        help="--report: run JSONs (default bench/results/train_moe_{builtin,bench}.json)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="data folder (layout: bench/lm_data.py)",
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="results (and the tarball) go here"
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch for checkpoint, traces, bundles (default: a temp dir)",
    )
    ap.add_argument(
        "--minutes", type=float, default=None, help="LM training time (default: builtin 4.5, bench 5)"
    )
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=9.3,
        help="the whole run's wall clock; predictor epochs fit in it",
    )
    ap.add_argument("--predictor-epochs", type=int, default=None, help="cap on predictor epochs per layer")
    ap.add_argument(
        "--max-samples", type=int, default=None, help="MMLU trace tokens (default: builtin 500k, bench 300k)"
    )
    ap.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainPlan number (bench/lm_train.py), e.g. micro_batch=16",
    )
    ap.add_argument(
        "--train-chars", type=int, default=None, help="read only this many characters of training books"
    )
    ap.add_argument(
        "--heldout-chars", type=int, default=None, help="read only this many characters of each held-out text"
    )
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.report:
        from bench.accuracy_report import write_report

        runs = args.runs or [ROOT / "bench" / "results" / f"train_moe_{s}.json" for s in ("builtin", "bench")]
        for path in write_report(runs, args.out):
            print(f"wrote {path}")
        return
    if args.smoke:
        args.budget_minutes = min(args.budget_minutes, 2.0)
        args.device = args.device or "cpu"
        args.train_chars = args.train_chars or 400_000
        args.heldout_chars = args.heldout_chars or 60_000
    run_pipeline(args)


if __name__ == "__main__":
    main()
