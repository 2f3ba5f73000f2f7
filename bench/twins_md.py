"""The Markdown page of `bench/twins_report.py` (`bench/results/twins.md`), from its summary: training,
routing vs published, predictors vs the Table 4 goal, Table 3 vs the paper, the twin-replayed decode, what
it says, what is missing, and the commands. Imports nothing but the report's constants.
"""

from __future__ import annotations

from bench.twins_report import COMMANDS, REPORT_COMMAND, ROW_KEY, SESSION_MINUTES


def _pct(x, nd: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{nd}f}%"


def _num(x, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _table(head: str, rows: list[str]) -> list[str]:
    """A Markdown table from a header and rows written as "a | b | c"."""
    return [f"| {head} |", "|" + "---|" * (head.count(" | ") + 1), *(f"| {r} |" for r in rows), ""]


def _find(data: dict, shape: str, fraction: float, policy: str = "none", batch: int = 1) -> dict | None:
    """The decode row of the runner's chosen steps at this shape, cache, policy and batch."""
    key = (shape, fraction, policy, batch, "chosen")
    return next((r for r in data["decode"] if tuple(r[k] for k in ROW_KEY) == key), None)


def _md_training(data: dict) -> list[str]:
    rows = [
        f"{t['real']} twin | {tr['layers']} × {tr['experts']}, top-{tr['top_k']} | {tr['params_total'] / 1e6:.0f}M / "
        f"{tr['params_active'] / 1e6:.1f}M | {tr['tokens_seen'] / 1e6:.1f}M | {tr['tokens_per_second']:,.0f} | "
        f"{tr['train_seconds']:.0f} | {tr['steps']} | {tr['final_train_loss']:.2f} | "
        f"{tr['ppl']['wikitext2_test']:.0f} | {tr['ppl']['gutenberg_valid']:.0f}"
        for t in data["twins"].values()
        for tr in [t["training"]]
    ]
    head = (
        "twin | layers × experts, top-k | params total / active | tokens seen | tok/s | train s | steps | "
        "final train loss | ppl WikiText-2 test | ppl Gutenberg valid"
    )
    return [
        "## 1. Training",
        "",
        *_table(head, rows),
        f"The DeepSeek-V2-Lite and Phi-mini-MoE twins trained side by side (with a first Qwen3-30B-A3B twin) "
        f"on one H200, 3 minutes each, in one {SESSION_MINUTES}-minute device call; the Qwen3-30B-A3B twin was "
        f"then retrained alone in a call of its own (its tok/s is the GPU's alone).",
        "",
    ]


def _md_routing(data: dict) -> list[str]:
    pub, rows = data["published"], []
    sweep = ", ".join(
        f"{s} slots {h:.1%}" for s, h in zip(pub["lru_slots"], pub["lru_hit_rate"], strict=True)
    )
    for t in data["twins"].values():
        for name, r in t["routing"].items():
            lru = "; ".join(
                f"{x['twin_slots']:.0f}: {_pct(x['twin'])} / {_pct(x['published'])} ({x['diff_points']:+.1f})"
                for x in r["lru_vs_published"]
            )
            rows.append(
                f"{t['real']} twin | {name} | {lru} | {r['usage_entropy_norm']:.2f} | {_pct(r['usage_min_share'], 2)}"
                f" / {_pct(r['usage_max_share'])} | {r['reuse_next']:.2f} | {r['reuse_within_8']:.2f} | "
                f"{r['median_reuse_distance']:g} | {_pct(r['never_reused'])}"
            )
    head = (
        "twin | set | LRU at slots: twin / published (points) | usage entropy / max | least / most used expert | "
        "next-token reuse (0.45) | within 8 (0.80) | median distance (2) | never reused"
    )
    lines = [
        "## 2. Routing next to the published Qwen3-30B-A3B figures",
        "",
        f"Published ({pub['source']}; real weights, LRU over 256 cold decode tokens, of 128 experts): {sweep}; "
        f"{pub['reuse_next']:.0%} of a token's experts repeat at the next token, {pub['reuse_within_8']:.0%} "
        f"within 8, median reuse distance {pub['median_reuse_distance']} tokens. A twin's slots are the published "
        "ones scaled by E / 128 (E or more slots take cold misses only); Qwen3's figures are a reference for the "
        "other families, not a target. Sets: `cold`, 32 WikiText-2 streams of 256 tokens; `chat`, 32 chat prompts.",
        "",
        *_table(head, rows),
        "How far off, and why (cold set):",
        "",
    ]
    lines += [
        f"- **{t['real']} twin**: {t['verdict']['text']}"
        + "".join(f"; {w}" for w in t["verdict"]["why"])
        + "."
        for t in data["twins"].values()
    ]
    off = [t for t in data["twins"].values() if t["verdict"]["kind"] != "close"]
    if off:
        blind = [t["real"] for t in off if t["training"]["aux"] == "transformers"]
        even = [
            t for t in off if t["verdict"]["kind"] == "too spread" and t["training"]["aux"] != "transformers"
        ]
        lines.append(
            f"- What would bring {', '.join(t['real'] for t in off)} closer: "
            + (
                f"retraining {', '.join(blind)} with the per-layer balance loss (now the default), then "
                if blind
                else ""
            )
            + "".join(
                f"retraining {t['real']} with a smaller balance weight than {t['training']['aux_coef']:g} "
                f"(`train_twin --aux-coef`), then "
                for t in even
            )
            + "more tokens. Their loss was still falling when the call's time ran out; a run that resumes "
            "training across device calls (not built) or a narrower twin (more tokens per second) are the next steps."
        )
    return lines + [""]


def _md_predictors(data: dict) -> list[str]:
    rows, per_layer = [], []
    for t in data["twins"].values():
        p, m = t["predictors"], t["predictors"]["mean"]
        goals = ("recall_at_k_mean", "recall_at_k_layer0", "top1")
        met = " / ".join("yes" if p["meets_goal"][k] else "no" for k in goals)
        rows.append(
            f"{t['real']} twin | arch {p['arch']} + {p['loss']} | {p['train_samples']:,} / {p['heldout_samples']:,} | "
            f"{_pct(m['recall_at_k'])} | {_pct(p['layer0_recall_at_k'])} | {_pct(p['min_recall_at_k'])} "
            f"({p['min_recall_layer']}) | {_pct(m['top1_accuracy'], 2)} / {_pct(p['min_top1'], 2)} | "
            f"{_pct(m['overprov_recall'])} | {_pct(p['router_recall_at_k'])} | {_pct(p['chat_recall_at_k'])} | {met}"
        )
        per_layer.append(f"- {t['real']} twin: " + " ".join(f"{100 * x:.0f}" for x in p["recall_at_k"]))
    head = (
        "twin | pairing | train / held-out samples | recall@k mean | layer 0 | min (layer) | top-1 mean / min | "
        "over-prov. recall | router baseline | chat recall@k | goal met: mean ≥ 95 / layer 0 ≥ 95 / top-1 ≥ 99.5"
    )
    budgets = "; ".join(
        f"{t['real']} {t['predictors']['seconds']:.0f} s (at most {t['predictors']['epochs_cap']} epochs)"
        for t in data["twins"].values()
    )
    short = [t["real"] for t in data["twins"].values() if t["predictors"]["epochs_cap"] <= 2]
    note = (
        "Held-out MMLU prompts (`chat`: every chat trace). Sticky routing is easier to predict: a too-sticky "
        "twin's high recall comes with routing concentrated on a few experts (section 2), so the representative "
        f"twins' figures are the ones to read against the paper. The predictors' training time, what the run's "
        f"deadline left them: {budgets}."
        + (
            f" {', '.join(short)}: two epochs or fewer, so its recall is a floor, not the architecture's."
            if short
            else ""
        )
    )
    return [
        "## 3. Predictors against the Table 4 goal",
        "",
        *_table(head, rows),
        "Recall@k per MoE layer (%):",
        "",
        *per_layer,
        "",
        note,
        "",
        *_md_lookahead(data),
    ]


def _md_lookahead(data: dict) -> list[str]:
    """Recall against lookahead distance, per twin whose run trained banks (`train_twin --lookahead`)."""
    rows, without, pub = [], [], None
    for t in data["twins"].values():
        la = t.get("lookahead")
        if la is None:
            without.append(t["real"])
            continue
        pub = la["published"]
        for r in la["distances"]:
            if r["distance"] == 0:
                rows.append(
                    f"{t['real']} twin | 0 (the predictors above) | {_pct(r['predictor'])} | — | — | — | —"
                )
                continue
            rows.append(
                f"{t['real']} twin | {r['distance']} | {_pct(r['predictor'])} | {_pct(r['router_ahead'])} | "
                f"{_pct(r['prior'])} | {r['epochs']} | {r['seconds']:.0f}"
            )
    if not rows:
        return []
    head = "twin | distance d | predictor recall@k | layer i + d's router on layer i's input | prior | epochs (at most) | train s"
    published = ", ".join(f"d = {d}: {100 * v:.1f}%" for d, v in pub["recall_by_distance"].items())
    return [
        "Lookahead predictors: a bank per distance d names MoE layer i + d's experts from layer i's pre-attention "
        "input, so its copies can start d layers early (`exact+d` in section 5). Held-out MMLU prompts:",
        "",
        *_table(head, rows),
        f"Published ({pub['source']}): {published}."
        + (
            f" No banks in the runs of: {', '.join(without)} (their artefacts predate `--lookahead`)."
            if without
            else ""
        ),
        "",
    ]


def _md_table3(data: dict) -> list[str]:
    lines = ["## 4. Table 3 against the paper (recall@k after one epoch)", ""]
    for t in filter(lambda t: t["table3"], data["twins"].values()):
        rows = [
            f"{c['arch']} | {c['loss']} | skipped ({c['skipped']}) | | | |"
            if "skipped" in c
            else f"{c['arch']} | {c['loss']} | {_pct(c['recall_at_k'], 2)} | {_pct(c['paper_recall_at_k'], 2)} | "
            f"{c['diff_points']:+.1f} | {_pct(c['top1'], 2)} | {c['seconds']}"
            for c in t["table3"]
        ]
        d = sorted(-c.get("diff_points", 0) for c in t["table3"] if c["loss"] in ("wbce", "rank_bce"))
        lines += [
            f"{t['real']} twin:",
            "",
            *_table("arch | loss | twin recall@k | paper | points | twin top-1 | s", rows),
            f"One epoch over the twin's {t['predictors']['train_samples']:,} training samples (the paper's: 10M "
            f"samples from MMLU prompts): WBCE and ranking-aware BCE land {d[0]:.1f}–{d[-1]:.1f} points below the "
            "paper, focal lower, and MSE far lower (its cause is not examined here).",
            "",
        ]
    return lines


def _record(r: dict) -> str:
    """Which decode record a row came from: `latest` (`decode_<shape>_twin.json`) or an earlier run's tag."""
    tag = r["run"].split("_twin", 1)[1].lstrip("_")
    return tag or "latest"


def _md_decode(data: dict) -> list[str]:
    rows = [
        f"{data['twins'][r['shape']]['real']} | {r['batch']} | {100 * r['fraction']:.0f}% | `{r['policy']}` | "
        f"{r['step']}{' (' + r['ran'] + ')' if r['ran'] else ''} | {r['tok_s']:.1f} [{r['tok_s_range'][0]:.1f}–"
        f"{r['tok_s_range'][1]:.1f}] | {_pct(r['hit_rate'])} | {r['mb_per_token']:.0f} ({r['fill_mb_per_token']:.0f}) | "
        f"{_num(r['stall_ms_per_token'])} | {_num(r['ratio_to_none'])} | {_num(r['ratio_to_resident'], '.3f')} | "
        f"{_num(r['time_ratio_to_pcie_floor'])} | {_num(r['ratio_to_plain'])} | {_record(r)}"
        for r in data["decode"]
    ]
    head = (
        "shape | batch | cache | policy | step (ran) | tok/s [min–max] | hit | MB/tok (fills) | stall ms/tok | "
        "× none | × resident | × PCIe floor | × plain | record"
    )
    ref = [
        f"{data['twins'][s]['real']} | {_pct(rw['none_50']['hit_rate'])}, {rw['none_50']['tok_s']:.1f} | "
        f"{_pct(tw and tw['hit_rate'])}, {_num(tw and tw['tok_s'], '.1f')} | {_pct(sim)}"
        for s, rw in data["random_weight"].items()
        for tw in [_find(data, s, 0.5)]
        for sim in [
            next(
                (x["lru"] for x in data["twins"][s]["routing"]["cold"]["curve"] if x["fraction"] == 0.5), None
            )
        ]
    ]
    return [
        "## 5. Twin-replayed decode",
        "",
        "The real-shape random-weight model on one H200, every router's choices replaced token by token by the "
        "twin's (64 MMLU and MT-Bench prompts); `exact` / `overprovision` replay the twin's predictors, `oracle` "
        "the routing. Medians [min–max]. `step`: `chosen` by the runner (in brackets what most steps ran, from the "
        "log), `segmented` (MOE_HOST_READS=false), `eager` / `torch-gemv` (ablations). MB/tok over PCIe (fills "
        "behind streamed steps). × none: over `none` at the same batch, cache and step; × resident: over 100%; "
        "× PCIe floor: ms per token over (its bytes / the measured bandwidth + the resident step), the decode "
        "record's serial floor, so below 1 means copies overlapped compute. × plain: over the unmodified "
        "transformers forward at the same batch (every expert on the GPU, its own routing: a speed baseline). "
        "record: `latest` is `decode_<shape>_twin.json`; a tag names an earlier run kept as "
        "`decode_<shape>_twin_<tag>.json`, used only for configurations the latest run lacks.",
        "",
        *_table(head, rows),
        "`none` at a 50% cache, batch 1, hit rate and tok/s: random-weight routing against the twin's:",
        "",
        *_table(
            "shape | random weights (`decode_<shape>_streamed.json`) | twin-replayed | the twin's simulated cold LRU",
            ref,
        ),
    ]


def _md_says(data: dict) -> list[str]:
    out = ["What it says (batch 1, chosen steps; ratios to `none` of the same run):", ""]
    for shape, t in data["twins"].items():
        line = _says_shape(data, shape, t)
        if line:
            out.append(line)
    fracs = (0.75, 0.5, 0.25)
    if any(_find(data, s, f, "oracle+1") for s in data["twins"] for f in fracs):
        ahead = [
            t["real"] for s, t in data["twins"].items() if any(_find(data, s, f, "exact+1") for f in fracs)
        ]
        out.append(
            "- **Where the window is**: perfect prediction issued at the layer itself (`oracle`) gains little, "
            "because a copy is longer than the attention it hides behind; the same prediction issued one or two "
            "layers ahead (`oracle+d`, `MOE_ORACLE_AHEAD`) is the gain prediction can bring at these cache sizes. "
            + (
                f"Trained predictors of layer i + d from layer i's input (`train_twin --lookahead`) turn part of "
                f"it into tokens on the {' and '.join(ahead)} twin (the best `exact+d` above); the other twins' "
                "predictors predict their own layer (d = 0)."
                if ahead
                else "The trained predictors replayed here predict their own layer (d = 0); predictors of layer "
                "i + d from layer i's input (`moe-prefetch train --distance d`) are what would turn it into tokens."
            )
        )
    out += _hybrid_lines(data) + _after_demand_lines(data)
    return out + _md_says_notes(data)


def _says_shape(data: dict, shape: str, t: dict) -> str | None:
    """One shape's bullet: `none` per cache size, then `oracle`, the best `oracle+d` and the replayed
    predictors over it."""
    fracs = [f for f in (0.75, 0.5, 0.25) if _find(data, shape, f)]
    if not fracs:
        return None
    res = _find(data, shape, 1.0)

    def per(policy: str, key: str = "ratio_to_none", fmt: str = "{:.2f}") -> str | None:
        rows = [_find(data, shape, f, policy) for f in fracs]
        return None if not all(rows) else " / ".join(fmt.format(r[key]) for r in rows)

    def best_ahead(name: str) -> str | None:
        cells = []
        for f in fracs:
            rows = [r for d in range(1, 5) if (r := _find(data, shape, f, f"{name}+{d}"))]
            if not rows:
                return None
            b = max(rows, key=lambda r: r["tok_s"])
            cells.append(f"{b['ratio_to_none']:.2f} (d = {b['policy'].split('+')[1]})")
        return " / ".join(cells)

    kind = t.get("verdict", {}).get("kind")
    at = " / ".join(f"{100 * f:.0f}" for f in fracs)
    text = (
        f"- **{t['real']} twin** ({'representative' if kind == 'close' else f'not representative: {kind}'}), "
        f"at {at}% of the experts: `none` {per('none', 'tok_s', '{:.1f}')} tok/s"
        + (f" against {res['tok_s']:.1f} resident" if res else "")
        + f", hit {per('none', 'hit_rate', '{:.1%}')}."
    )
    if orc := per("oracle"):
        text += f" `oracle` {orc}× `none`."
    if ahead := best_ahead("oracle"):
        text += f" The best `oracle+d` {ahead}× `none`."
    if ahead := best_ahead("exact"):
        text += f" The twin's lookahead predictors (the best `exact+d`): {ahead}× `none`."
    pred = [(p, r) for p in ("exact", "overprovision") if (r := per(p))]
    if pred:
        text += " The twin's predictors replayed: " + "; ".join(f"`{p}` {r}×" for p, r in pred) + "."
    return text


def _hybrid_lines(data: dict) -> list[str]:
    """One bullet per shape with hybrid-miss rows: each against the same policy's chosen steps, same record."""
    out = []
    for shape, t in data["twins"].items():
        cells = [
            f"`{r['policy']}` {r['ratio_to_chosen']:.2f}× at {100 * r['fraction']:.0f}%"
            for r in data["decode"]
            if r["shape"] == shape and r["step"] == "hybrid" and r["batch"] == 1 and r.get("ratio_to_chosen")
        ]
        if cells:
            out.append(
                f"- **Hybrid misses on the {t['real']} twin** (`MOE_HYBRID_MISSES`: the host computes part of "
                "each layer's misses), against the same policy's chosen steps in the same run: "
                + ", ".join(cells)
                + ". Below 1, the host's share costs more than the copies it saves."
            )
    return out


def _after_demand_lines(data: dict) -> list[str]:
    """One bullet per shape with after-demand rows: each against the same policy's chosen steps (tap order)
    and segmented `none`, same record."""
    out = []
    for shape, t in data["twins"].items():
        cells = [
            f"`{r['policy']}` {r['ratio_to_chosen']:.2f}× its tap order and {r['ratio_to_none']:.2f}× segmented "
            f"`none` at {100 * r['fraction']:.0f}%"
            for r in data["decode"]
            if r["shape"] == shape
            and r["step"] == "after-demand"
            and r["batch"] == 1
            and r.get("ratio_to_chosen")
            and r.get("ratio_to_none")
        ]
        if cells:
            out.append(
                f"- **Lookahead copies behind the demand on the {t['real']} twin** (`MOE_LOOKAHEAD_AFTER_DEMAND`, "
                "segmented steps), in the same run: " + ", ".join(cells) + "."
            )
    return out


def _md_says_notes(data: dict) -> list[str]:
    """Records left out (another twin's) and records whose steps all ran eager."""
    out = []
    for t in data["twins"].values():
        if t.get("decode_stale"):
            out.append(
                f"- **{t['real']}**: the decode record{'s' if len(t['decode_stale']) > 1 else ''} "
                f"{', '.join(f'`{n}.json`' for n in t['decode_stale'])} replayed an earlier twin of this shape "
                f"(another twin fingerprint), so {'they are' if len(t['decode_stale']) > 1 else 'it is'} left out "
                "of the table."
            )
        eager = t.get("decode", {}).get("coverage", {}).get("eager_steps")
        if eager:
            out.append(
                f"- **{t['real']}**: every step of {len(eager)} configurations ran eager (a CUDA graph capture "
                "failed, the record's log says why), so its speeds are not the engine's."
            )
    return out + [""]


def _md_missing(data: dict) -> list[str]:
    runs = {(t["decode"]["runs"], t["decode"]["new_tokens"]) for t in data["twins"].values() if "decode" in t}
    lines = ["## 6. What is missing", "", *(f"- `{m}` (not found)" for m in data["missing"])]
    for t in data["twins"].values():
        cov = t.get("decode", {}).get("coverage")
        if cov is None:
            continue
        gaps = cov["missing"] + ([] if cov["plain"] else ["the plain transformers forward"])
        if gaps:
            lines.append(f"- {t['real']}: no decode row for {', '.join(gaps)} (`none`, chosen steps).")
        if cov["skipped"]:
            lines.append(
                f"- {t['real']}: configurations the run's deadline skipped: {', '.join(cov['skipped'])}."
            )
    lines.append(
        "- More runs: "
        + ", ".join(f"{r} runs of {n} tokens" for r, n in sorted(runs))
        + " per configuration, one device call per shape."
    )
    return lines + [""]


def render_markdown(data: dict) -> str:
    kinds = {t["real"]: t["verdict"]["kind"] for t in data["twins"].values()}
    good = [n for n, k in kinds.items() if k == "close"]
    off = [f"{n} ({k})" for n, k in kinds.items() if k != "close"]
    lines = [
        "# Routing twins: trained routing at real MoE shapes, and the decode it drives",
        "",
        "Small models (hidden 384) trained from scratch with a real model's expert topology, so the real-shape "
        "engine can run on routing that looks trained. Representative (cold LRU close to the published): "
        f"**{', '.join(good) or 'none'}**; not representative: {', '.join(off) or 'none'}. Every number is in "
        "`twins.json`, written with this page by the last command below.",
        "",
        "Commands: one H200 call trained the three twins side by side and a later one retrained the Qwen3-30B-A3B "
        "twin alone (each run's own command follows), then one call per shape ran the twin-replayed decode "
        "(written as `/root/out/decode_<shape>.json`, committed as `bench/results/decode_<shape>_twin.{json,log,png}`):",
        "",
        "```bash",
        *COMMANDS,
        *(t["training"]["command"] for t in data["twins"].values()),
        *(t["decode"]["command"] for t in data["twins"].values() if "decode" in t),
        REPORT_COMMAND,
        "```",
        "",
    ]
    parts = (_md_training, _md_routing, _md_predictors, _md_table3, _md_decode, _md_says, _md_missing)
    return "\n".join(lines + [x for part in parts for x in part(data)])
