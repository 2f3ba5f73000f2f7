"""Routing twins (issue #21 item 1): a real model's expert topology trained from scratch at a small width,
traced, measured against the real model's published routing, with its predictors and a replay artefact.

    # the data folder, small enough to carry to the GPU machine (bench/twin_data.py), once
    python bench/twin_data.py --dst .cache/twin_data
    # one H200, one 10-minute call per shape (the run ends by --deadline seconds after it starts)
    python bench/train_twin.py --shape qwen3-30b-a3b --train-minutes 5 --deadline 560 --data .cache/twin_data --out $OUT
    python bench/train_twin.py --shape deepseek-v2-lite --train-minutes 4 --deadline 560 --table3 --data .cache/twin_data --out $OUT
    python bench/train_twin.py --shape phi-mini-moe --train-minutes 6 --deadline 560 --data .cache/twin_data --out $OUT
    # CPU smoke of every phase at toy size (< ~60 s)
    python bench/train_twin.py --shape deepseek-v2-lite --smoke --out /tmp/twin_smoke

Phases, each recorded in `<out>/train_twin_<shape>.json` as soon as it is done (a run cut off keeps them):
1. train (bench/twin_shapes.py: the shape; bench/lm_data.py, bench/lm_train.py: Gutenberg + chat stream,
   AdamW, bf16 autocast, grouped-GEMM experts): tokens seen, wall time, final train loss, perplexity on
   WikiText-2 test (and Gutenberg-valid). Training time is --train-minutes, cut so the later phases fit;
2. traces (bench/twin_trace.py, predictors.collect) of the trained twin in eval mode, its experts the
   training's grouped GEMMs (bf16 on CUDA: transformers 5.17's eager experts made this phase take minutes),
   the rest float32: MMLU, chat prompt sets, and 256-token WikiText-2 paragraphs for the cold-cache figures;
3. predictors (bench/twin_predict.py, predictors.train): Arch 2 + weighted BCE by default, recall@k and top-1
   per layer, in the time left after what the later phases need; then with `--lookahead 1,2` a bank per
   distance d (1 epoch): predictors of layer i + d's experts from layer i's input (bench/lookahead_recall.py,
   recall against distance), while time is left;
4. the replay artefact (bench/twin_replay.py): `<out>/twin_replay_<shape>.{npz,json}`, 64 MMLU + chat
   prompts (up to 256 tokens each): routed ids and weights and the predictors' top-k' per token and layer,
   and each lookahead bank's (`bench/decode.py --policies exact+d` replays them d layers ahead);
5. routing statistics (bench/routing_stats.py; cold per-layer LRU/LFU/Belady caches and reuse distances in
   bench/twin_cache.py) next to Qwen3-30B-A3B's published figures (bench/twin_report.py);
6. `--table3`: the four losses x both architectures after one epoch, cut by the deadline;
7. the PNG `<out>/train_twin_<shape>.png` (hit rate vs cache size, twin vs published) and the final JSON.
The replay artefact comes before the statistics so that a run cut short still leaves what later decode runs
replay.
"""

from __future__ import annotations

import time

START = time.monotonic()  # --deadline counts from here

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Seconds the phases after training need on one H200 (estimates; --smoke: a few seconds each): traces,
# predictors, replay, routing statistics, report. --table3 adds TABLE3_S. ROUTING_S and TAIL_S are kept
# from the predictors' budget.
AFTER_TRAIN_S = {"qwen3-30b-a3b": 250.0, "deepseek-v2-lite": 150.0, "phi-mini-moe": 130.0}
# Qwen3: 220 s until stop 31, whose `--lookahead 1,2` run (deadline 520) left the predictors 171 s, 3 s short of
# PREDICTORS_MIN_S + both banks, so the banks gave way and were then skipped (traces took 43 s after the
# training, not the ~34 s of stop 29); 250 keeps that margin
# measured alone on one H200 (stop 29): routing 12.7 s (DeepSeek), 11.3 s (Phi), 16.6 s (Qwen3); Table 3 40 s
# (DeepSeek; 59 s sharing the GPU with the Phi twin at stop 27); kept with 1.5x margin
ROUTING_S = {"qwen3-30b-a3b": 30.0, "deepseek-v2-lite": 20.0, "phi-mini-moe": 20.0}
TABLE3_S = 60.0
TAIL_S = 30.0  # replay (64 batch-1 forwards) + PNG + final JSON
# one lookahead distance's bank (1 epoch on the MMLU traces) must fit in what is left: measured 9.7 s per
# epoch on the DeepSeek twin (26 layers x 64 experts) and 13-14 s per bank on Phi (32 x 16, stop 27); Qwen3
# scaled by its 48 layers; kept with 1.5x margin. (At 40 s for DeepSeek, stop 29's run skipped d=2 with
# 128 s of its deadline unused.)
LOOKAHEAD_S = {"qwen3-30b-a3b": 27.0, "deepseek-v2-lite": 15.0, "phi-mini-moe": 20.0}
LOOKAHEAD_EPOCHS = 8  # the most epochs a lookahead bank is given (early stopping may end it sooner)
PREDICTORS_MIN_S = 120.0  # the predictors' budget is never cut below this for the lookahead banks


def lookahead_seconds(args) -> float:
    """The seconds the `--lookahead` banks are given (none with --smoke)."""
    return 0.0 if args.smoke else LOOKAHEAD_S[args.shape] * len([d for d in args.lookahead.split(",") if d])


def phase_train(run, args, shape, device, tok):
    """Phase 1: build, train within the time left, perplexity. Returns the trained twin (eval mode)."""
    import torch

    from bench.lm_data import load_corpus
    from bench.lm_experts import choose_experts_implementation
    from bench.lm_train import Windows, heldout_windows, perplexity, train_lm
    from bench.twin_shapes import build_twin, inner_model, twin_params

    corpus = load_corpus(
        args.data, max_train_chars=args.train_chars, max_heldout_chars=args.heldout_chars, seed=args.seed
    )
    run.put("data", {**corpus.stats, "data_dir": str(args.data)}, phase="data")
    model = build_twin(shape, device, args.seed, aux=args.aux, aux_coef=args.aux_coef)
    impl = choose_experts_implementation(inner_model(model), device)
    run.say(f"{shape.name} twin: {twin_params(model)}; experts: {impl}")
    run.put(
        "model",
        {
            "config": inner_model(model).config.to_dict(),
            "params": twin_params(model),
            "aux": args.aux,
            **impl,
        },
    )
    after = (2.0 if args.smoke else AFTER_TRAIN_S[shape.name]) + (
        TABLE3_S if args.table3 and not args.smoke else 0
    )
    after += lookahead_seconds(args)  # the lookahead banks are kept from training, not from the predictors
    fit_min = (args.deadline - (time.monotonic() - START) - after) / 60
    minutes = max(0.05 if args.smoke else 0.5, min(args.train_minutes, fit_min))
    run.say(f"training {minutes:.2f} min (asked {args.train_minutes}, {fit_min:.2f} fit before the deadline)")
    plan = shape.plan
    windows = Windows(corpus.books, corpus.chat, plan.seq_len, device, args.seed)
    gv = corpus.heldout["gutenberg_valid"]
    n_sel = min(plan.select_windows * plan.seq_len, gv.size // 2)
    select = heldout_windows(gv[gv.size - n_sel :], plan.seq_len)
    report = train_lm(model, windows, select, corpus.bytes_per_token, plan, minutes, device, say=run.say)
    del windows
    streams = {"wikitext2_test": corpus.heldout["wikitext2_test"], "gutenberg_valid": gv[: gv.size - n_sel]}
    ppl = {
        k: perplexity(model, s, corpus.bytes_per_token, plan.seq_len, device, plan.micro_batch)
        for k, s in streams.items()
    }
    for k, v in ppl.items():
        run.say(f"{k}: perplexity {v.get('ppl', float('nan')):.2f} over {v.get('tokens', 0)} tokens")
    final_loss = report["curve"][-1][3] if report["curve"] else None
    summary = {k: v for k, v in report.items() if k != "curve"}
    run.put(
        "train",
        {
            **summary,
            "minutes_asked": args.train_minutes,
            "final_train_loss": final_loss,
            "curve": report["curve"],
            "perplexity": ppl,
        },
        phase="train",
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.empty_cache()
    return inner_model(model).eval()  # the training's experts implementation stays (see phase 2)


def phase_routing(run, shape, traces: dict, workers: int) -> None:
    """Phase 5: usage and reuse statistics, cold per-layer caches, the comparison with the published."""
    from bench.routing_stats import routing_stats
    from bench.twin_cache import cold_cache, reuse
    from bench.twin_report import compare
    from bench.twin_trace import layer_streams

    out = {}
    for name in ("cold", "chat", "mmlu"):
        ts = traces[name]
        stats = routing_stats(ts)
        entry = {"stats": {k: v for k, v in stats.items() if k != "layers"}, "per_layer": stats["layers"]}
        if name in ("cold", "chat"):
            streams = layer_streams(ts, max_len=shape.cold_len, max_streams=shape.cold_streams)
            entry["cache"] = cold_cache(streams, ts.num_experts, ts.top_k, workers=workers)
            entry["reuse"] = reuse(streams, ts.num_experts)
            entry["vs_published"] = compare(entry["cache"], entry["reuse"], stats)
            lru = ", ".join(
                f"{r['twin_slots']}: {r['twin']:.3f} (pub {r['published']:.3f})"
                for r in entry["vs_published"]["lru"]
            )
            run.say(
                f"routing ({name}): LRU hit by slots {lru}; next-token reuse {entry['reuse']['reuse_next']:.3f} "
                f"(pub 0.45), median reuse distance {entry['reuse']['median_reuse_distance']} (pub 2)"
            )
        run.say(
            f"routing ({name}): usage entropy {stats['mean']['usage_entropy_norm']:.3f} of max, "
            f"overlap {stats['mean']['reuse_overlap']:.3f} (uniform {stats['uniform_reuse_overlap']:.3f})"
        )
        out[name] = entry
        run.say(f"routing ({name}) done at {time.monotonic() - START:.0f} s")
    run.put("routing", out, phase="routing")


def phase_lookahead(run, args, shape, traces, device, left, reserve: float) -> dict:
    """Phase 3b: a predictor bank per `--lookahead` distance on the MMLU traces, each started only when more
    than the shape's LOOKAHEAD_S are left before the tail and the `reserve` the later phases need, and given
    its share of what is left: as many epochs (1 to LOOKAHEAD_EPOCHS, early stopping) as that share fits
    (`bench.predictor_steps.plan_epochs`), so time the earlier phases did not use trains the banks longer.
    Returns {d: bank} for the replay artefact (phase 4 records their predictions)."""
    from bench.lookahead_recall import PUBLISHED, distance_row
    from bench.predictor_steps import plan_epochs
    from predictors.metrics import default_k_prime

    ns = argparse.Namespace(
        arch=args.arch, loss=args.loss, hidden=shape.predictor_hidden, epochs=1, device=str(device),
        seed=args.seed,
    )  # fmt: skip
    kp, rows, banks = default_k_prime(traces.top_k, traces.num_experts), [], {}
    distances = [int(x) for x in args.lookahead.split(",")]
    for i, d in enumerate(distances):
        if not 0 < d < traces.num_layers:
            run.say(f"lookahead d={d}: skipped, the twin has {traces.num_layers} MoE layers")
            continue
        spare = left() - TAIL_S - reserve
        if spare < (2.0 if args.smoke else LOOKAHEAD_S[shape.name]):
            run.say(
                f"lookahead d={d}: skipped, {left():.0f} s left ({reserve:.0f} s kept for later phases, "
                f"{TAIL_S:.0f} for the tail, {LOOKAHEAD_S[shape.name]:.0f} needed)"
            )
            break
        share = spare / (len(distances) - i)
        if not args.smoke:
            fit, _ = plan_epochs(0.7 * share, traces, ns.arch, ns.loss, ns.hidden, ns.device)
            ns.epochs = max(1, min(LOOKAHEAD_EPOCHS, fit))
        rows.append(
            distance_row(traces, d, ns, kp, banks) | {"epochs": ns.epochs, "budget_s": round(share, 1)}
        )
        m = rows[-1]["mean"]
        run.say(
            f"lookahead d={d}: predictor recall@k {m['predictor']['recall_at_k']:.4f}, router ahead "
            f"{m['router_ahead']['recall_at_k']:.4f} ({ns.epochs} epochs at most, {rows[-1]['seconds']} s "
            f"of {share:.0f})"
        )
        run.put("lookahead", {"k_prime": kp, "published": PUBLISHED, "distances": rows}, phase="lookahead")
    return banks


def replay_prompts(args, shape, tok, mmlu: list[str]) -> list[dict]:
    """Half MMLU questions from the end of the shuffled list (never traced for training), half MT-Bench
    (vicuna_bench when absent) first turns in the chat template."""
    from predictors.collect import encode_prompt

    n_mmlu = shape.replay_prompts // 2
    out = [{"source": "mmlu/test", "text": t, "chat": False} for t in mmlu[-n_mmlu:]]
    for rel in ("mt_bench/question.jsonl", "vicuna_bench/question.jsonl"):
        path = args.data / rel
        if path.exists():
            recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            texts = [r["turns"][0] for r in recs if isinstance(r.get("turns"), list) and r["turns"]]
            out += [{"source": rel, "text": t, "chat": True} for t in texts[: shape.replay_prompts - n_mmlu]]
            break
    for p in out:
        p["ids"] = encode_prompt(tok, p["text"], chat_template=p.pop("chat"), max_tokens=shape.replay_tokens)
    return out


def run_pipeline(args) -> None:
    import torch
    import transformers

    from bench.lm_data import TOKENIZER
    from bench.run_record import Run
    from bench.twin_predict import table3, train_predictors
    from bench.twin_replay import record, sha256_file, write
    from bench.twin_report import plot
    from bench.twin_shapes import twin_shape
    from bench.twin_trace import trace_all
    from engine.model.builtin import builtin_tokenizer
    from engine.model.fingerprint import model_fingerprint
    from predictors.metrics import default_k_prime

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    tok = builtin_tokenizer()
    shape = twin_shape(args.shape, len(tok), args.smoke)
    sizes = {"trace_tokens": args.trace_tokens, "chat_tokens": args.chat_tokens}
    shape = dataclasses.replace(shape, **{k: v for k, v in sizes.items() if v})
    work = args.work or Path(tempfile.mkdtemp(prefix=f"train_twin_{shape.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    name = f"train_twin_{shape.name}" + ("_smoke" if args.smoke else "")
    info = {
        "shape": shape.name,
        "smoke": args.smoke,
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seed": args.seed,
        "deadline_s": args.deadline,
        "tokenizer_sha256": sha256_file(TOKENIZER),
    }
    run = Run(args.out, name, info, START)
    run.data["kind"] = "train_twin"
    run.say(f"{name} on {info['device']}; work dir {work}; deadline {args.deadline} s")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = phase_train(run, args, shape, device, tok)  # 1

    tr = trace_all(model, tok, args.data, shape, work, device, args.seed, say=run.say)  # 2
    traces = tr["sets"]
    run.say(f"traces: {json.dumps({k: v['samples'] for k, v in tr['info'].items()})}")
    run.put("traces", tr["info"], phase="traces")

    left = lambda: args.deadline - (time.monotonic() - START)  # noqa: E731
    t3 = TABLE3_S if args.table3 and not args.smoke else 0.0
    la = lookahead_seconds(args)
    budget = left() - TAIL_S - ROUTING_S[shape.name] - t3
    if budget - la >= PREDICTORS_MIN_S:  # else the lookahead banks give way (phase 6b skips them)
        budget -= la
    elif la:
        run.say(
            f"predictors: {budget:.0f} s left for them and the lookahead banks' {la:.0f} s, under "
            f"{PREDICTORS_MIN_S:.0f} + {la:.0f}: the banks give way (raise --deadline or AFTER_TRAIN_S)"
        )
    budget = 6.0 if args.smoke else max(5.0, budget)  # 3
    run.say(f"predictors: arch {args.arch} + {args.loss}, {budget:.0f} s budget")
    bank, pred = train_predictors(
        traces["mmlu"],
        traces["chat"],
        arch=args.arch,
        loss=args.loss,
        hidden=shape.predictor_hidden,
        device=str(device),
        budget_s=budget,
        seed=args.seed,
    )
    m = pred["heldout_mean"]
    run.say(
        f"predictors: held-out recall@k {m['recall_at_k']:.4f}, top-1 {m['top1_accuracy']:.4f}, "
        f"layer 0 recall@k {pred['layers'][0]['recall_at_k']:.4f} ({pred['seconds']} s)"
    )
    run.put("predictors", pred, phase="predictors")
    ahead = {}
    if (
        args.lookahead
    ):  # 3b: recall against lookahead distance (bench/lookahead_recall.py), while time is left
        reserve = 0.0 if args.smoke else ROUTING_S[shape.name] + t3
        ahead = phase_lookahead(run, args, shape, traces["mmlu"], device, left, reserve)
    k = int(model.config.num_experts_per_tok)  # 4
    kp = default_k_prime(k, traces["mmlu"].num_experts)
    rec = record(
        model,
        bank.to(device),
        replay_prompts(args, shape, tok, tr["mmlu_prompts"]),
        kp,
        shape.replay_tokens,
        args.replay_max_mb * 2**20,
        ahead={d: b.to(device) for d, b in ahead.items()},
    )
    meta = {
        "tokenizer": "engine/model/assets/tokenizer.json",
        "tokenizer_sha256": info["tokenizer_sha256"],
        "twin_fingerprint": model_fingerprint(model),
        "twin_config": run.data["model"]["config"],
        "predictors": {"arch": args.arch, "loss": args.loss, "hidden": shape.predictor_hidden},
        "routing_source": f"twin-replayed ({shape.name} twin trained by bench/train_twin.py)",
        "smoke": args.smoke,
    }
    manifest = write(args.out, f"twin_replay_{shape.name}" + ("_smoke" if args.smoke else ""), rec, meta)
    run.say(
        f"replay: {manifest['tokens']} tokens of {manifest['prompts_count']} prompts, {manifest['bytes']} bytes"
    )
    run.put(
        "replay", {k: v for k, v in manifest.items() if k not in ("prompts", "twin_config")}, phase="replay"
    )

    phase_routing(run, shape, traces, workers=1 if args.smoke else args.workers)  # 5
    if args.table3:  # 6
        run.put(
            "table3",
            table3(
                traces["mmlu"],
                hidden=shape.predictor_hidden,
                device=str(device),
                seed=args.seed,
                deadline=START + args.deadline - TAIL_S,
                say=run.say,
            ),
            phase="table3",
        )

    caches = {n: run.data["routing"][n]["cache"] for n in ("cold", "chat")}  # 7
    plot(shape.name, caches, args.out / f"{name}.png")
    run.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    run.data["wall_seconds"] = round(time.monotonic() - START, 1)
    run.write()
    run.say(f"done in {run.data['wall_seconds']:.0f} s: {sorted(p.name for p in args.out.iterdir())}")


def main() -> None:
    from bench.twin_shapes import SHAPES

    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:11]),
    )
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument(
        "--train-minutes", type=float, default=5.0, help="LM training time (cut to fit --deadline)"
    )
    ap.add_argument("--deadline", type=float, default=560.0, help="seconds from start by which the run ends")
    ap.add_argument("--out", type=Path, required=True, help="JSON, PNG, log and replay artefact go here")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, every phase in < ~60 s")
    ap.add_argument(
        "--table3", action="store_true", help="also the 4 losses x 2 architectures after one epoch"
    )
    ap.add_argument(
        "--aux",
        choices=("per-layer", "transformers"),
        default="per-layer",
        help="balance loss: per MoE layer (bench/twin_shapes.py BalanceAux), or the family's own in "
        "transformers (layer-blind; the first Qwen3 and Phi twins)",
    )
    ap.add_argument(
        "--aux-coef",
        type=float,
        default=None,
        help="weight of the per-layer balance loss (default: the real model's, 0.001); a smaller one lets a "
        "twin that spreads its picks too evenly concentrate",
    )
    ap.add_argument("--arch", type=int, choices=(1, 2), default=2)
    ap.add_argument("--loss", choices=("mse", "wbce", "focal", "rank_bce"), default="wbce")
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="layout: bench/lm_data.py"
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch for the traces (default: a temp dir)")
    ap.add_argument("--train-chars", type=int, default=None, help="read only this many characters of books")
    ap.add_argument("--heldout-chars", type=int, default=2_000_000, help="characters of each held-out text")
    ap.add_argument(
        "--replay-max-mb", type=float, default=15.0, help="replay arrays cap, MiB (< 16: comes back)"
    )
    ap.add_argument(
        "--lookahead", default="", help="distances for phase 6b, e.g. 1,2 (empty: skip); cut by the deadline"
    )
    ap.add_argument("--trace-tokens", type=int, default=None, help="MMLU trace tokens (default: the shape's)")
    ap.add_argument("--chat-tokens", type=int, default=None, help="chat trace tokens (default: the shape's)")
    ap.add_argument("--workers", type=int, default=12, help="processes for the cache replays")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.smoke:
        args.device = args.device or "cpu"
        args.train_minutes = min(args.train_minutes, 0.05)
        args.deadline = min(args.deadline, 90.0)
        args.train_chars = args.train_chars or 300_000
        args.heldout_chars = min(args.heldout_chars, 20_000)
    run_pipeline(args)


if __name__ == "__main__":
    main()
