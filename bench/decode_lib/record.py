"""The decode benchmark's JSON record and its console log.

The record is one dict written whole after every configuration, so a cut-off run keeps what it measured:
the run's header (machine, model, floors), one entry per configuration, the sections the other
measurements add, and the ratios derived at the end.

Imports torch and transformers (their versions) only.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def header(
    args, om, device_name: str, dtype, bw: float | None, hbm: float | None, active: dict, prompt_tokens: int
) -> dict:
    """What the run is: versions, the model's shape, the machine's bandwidths and the HBM floor."""
    return {
        "preset": args.preset,
        "routing": "random",  # or "twin-replayed (<artefact>, sha256 ...)": `replay.TwinReplay.label`
        "eviction": args.eviction,  # of every expert cache the run makes (MOE_EVICTION)
        "random_weights": True,
        "embed_std": args.embed_std,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "dtype": str(dtype),
        "top_k": om.top_k,
        "experts_total": om.store.total_experts,
        "expert_bytes": om.store.layout.nbytes,
        "h2d_gb_per_s": bw / 1e9 if bw else None,
        "hbm_gb_per_s": hbm / 1e9 if hbm else None,
        "active_bytes_per_token": active,
        "hbm_floor_ms": 1e3 * active["total_bytes"] / hbm if hbm else None,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "prompt_tokens": prompt_tokens,
        "decode": "teacher-forced, batch 1: each step feeds the text's next token; each run its own text",
        "command": "python " + " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),  # tells records of one device call from another's
        "configs": [],
    }


class Record:
    """The result dict and its file. `add_config` also checks every configuration's greedy tokens against
    the first one's (and the first one's against the plain forward's)."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data
        self.plain_tokens: list[int] | None = None
        self.reference: list | None = None

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))

    def skipped(self, what: str) -> None:
        self.data.setdefault("skipped", []).append(what)

    def add_config(
        self, policy: str, fraction: float, s: dict, slots: int, wall: float, steps: dict, variant=None
    ) -> None:
        if self.reference is None:
            self.reference = s["tokens"]
            if self.plain_tokens:  # the engine's greedy choices against the plain forward's, same text (bf16)
                mine = s["tokens"][0][: len(self.plain_tokens)]
                same = sum(a == b for a, b in zip(mine, self.plain_tokens, strict=False))
                self.data["agreement_with_plain"] = {"steps": len(mine), "same_argmax": same}
                log(f"argmax agreement with the plain forward: {same}/{len(mine)}")
        s["same_tokens_as_reference"] = s["tokens"] == self.reference
        s["routing"] = self.data.get(
            "routing", "random"
        )  # which routing every number of this config came from
        if policy in self.data.get("predictions_by_policy", {}):
            s["predictions"] = self.data["predictions_by_policy"][policy]
        entry = {"policy": policy, "fraction": fraction, "slots": slots, "summary": s, "wall_s": wall}
        entry["steps"] = dict(
            steps
        )  # the runner's step counts: graph / eager / captures / streamed / segmented
        if variant:
            entry["variant"] = variant
        self.data["configs"].append(entry)
        self.write()
        log(
            f"{policy:>13} {variant or '':14} @ {100 * fraction:3.0f}%: {s['tok_s_median']:7.2f} tok/s "
            f"[{s['tok_s_min']:.2f}-{s['tok_s_max']:.2f}], hit {100 * s['hit_rate']:5.1f}%, "
            f"stall {s['stall_ms_per_token']:6.2f} ms/tok, {s['bytes_per_token'] / 1e6:7.1f} MB/tok "
            f"(host reads {s['host_read_bytes_per_token'] / 1e6:.1f}, fills {s['fill_bytes_per_token'] / 1e6:.1f}), "
            f"same tokens {s['same_tokens_as_reference']}, graphs {steps}{spread_note(s)}"
        )


def spread_note(s: dict) -> str:
    """`; steps p50/max ms by run: 21.0/44.2 (3 slow), ...` from the summary's `steps_by_run`: whether a
    slow run's steps were all slow or a few waited long (slow: over twice the run's median step); and the
    full garbage-collector passes inside the runs (`gc_by_run`), where there were any; and the segmented steps'
    host time a token by phase (`host_ms_per_token`)."""
    runs = [r for r in s.get("steps_by_run", []) if r["p50_ms"] is not None]
    if not runs:
        return ""
    note = "; steps p50/max ms by run: " + ", ".join(
        f"{r['p50_ms']:.1f}/{r['max_ms']:.1f} ({r['over_2x_median']} slow)" for r in runs
    )
    full = [g for g in s.get("gc_by_run", []) if g["full"]]
    if full:  # a full pass of the garbage collector fell inside a run: its longest pause
        note += f"; full GC passes {sum(g['full'] for g in full)} (longest {max(g['max_ms'] for g in full):.0f} ms)"
    host = s.get("host_ms_per_token")
    if host:  # segmented steps: where the host's time of a token went
        parts = ", ".join(f"{k} {v:.2f}" for k, v in host.items() if k != "total")
        note += f"; host ms a token {host['total']:.2f} ({parts})"
    return note


def add_ratios(result: dict) -> None:
    """Time per token against `none`, `oracle`, the plain forward and the floors (the issues' targets)."""
    by = {(c["policy"], c["fraction"]): c["summary"] for c in result["configs"] if not c.get("variant")}
    resident = by.get(("none", 1.0))
    plain = result.get("plain", {}).get("tok_s_median")
    ratios = {}
    for c in result["configs"]:
        policy, fraction, s = c["policy"], c["fraction"], c["summary"]
        row = {}
        for base in ("none", "oracle"):
            b = by.get((base, fraction))
            if b:
                row[f"speedup_vs_{base}"] = s["tok_s_median"] / b["tok_s_median"]
                row[f"time_ratio_to_{base}"] = b["tok_s_median"] / s["tok_s_median"]
        if plain:
            row["speedup_vs_plain"] = s["tok_s_median"] / plain
        if resident and "pcie_ms_per_token" in s:
            floor = s["pcie_ms_per_token"] + resident["ms_per_token_median"]
            row["pcie_floor_ms"] = floor
            row["time_ratio_to_pcie_floor"] = s["ms_per_token_median"] / floor
            if "pcie_ms_per_token_with_fills" in s:  # stricter: the fills behind streamed steps count too
                floor_all = s["pcie_ms_per_token_with_fills"] + resident["ms_per_token_median"]
                row["time_ratio_to_pcie_floor_with_fills"] = s["ms_per_token_median"] / floor_all
        key = f"{policy}@{fraction}" + (f"/{c['variant']}" if c.get("variant") else "")
        ratios[key] = row
    if resident and result.get("hbm_floor_ms"):
        ratios["resident_time_ratio_to_hbm_floor"] = resident["ms_per_token_median"] / result["hbm_floor_ms"]
    result["ratios"] = ratios
