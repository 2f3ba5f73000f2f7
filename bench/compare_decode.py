"""Two `bench/decode.py` results of the same shape side by side: did a change keep tokens and speed?

    python bench/compare_decode.py OLD.json NEW.json --out bench/results/compare.json

Per configuration present in both (policy, cache fraction, step kind): the median tok/s of each, their
ratio (new / old), and whether every decode step's argmax is the same; the same for the batched
throughput runs. The two runs should come from one device session, one after the other (a ratio across
machines or sessions says little). Exit status 1 if any argmax differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _key(c: dict) -> str:
    extra = [
        f"{k}={v}"
        for k, v in sorted(c.items())
        if k not in ("policy", "fraction", "slots", "summary", "wall_s")
    ]
    return "/".join([str(c["policy"]), f"{float(c['fraction']):g}", *extra])


def compare(old: dict, new: dict) -> dict:
    rows, same_all = [], True
    olds = {_key(c): c for c in old.get("configs", [])}
    for c in new.get("configs", []):
        o = olds.get(_key(c))
        if o is None:
            continue
        a, b = o["summary"], c["summary"]
        same = a.get("tokens") == b.get("tokens")
        same_all &= same
        rows.append({
            "config": _key(c), "old_tok_s": round(a["tok_s_median"], 2), "new_tok_s": round(b["tok_s_median"], 2),
            "ratio": round(b["tok_s_median"] / a["tok_s_median"], 3) if a["tok_s_median"] else None,
            "old_spread": [round(a["tok_s_min"], 2), round(a["tok_s_max"], 2)],
            "new_spread": [round(b["tok_s_min"], 2), round(b["tok_s_max"], 2)],
            "hit_rate": [a.get("hit_rate"), b.get("hit_rate")], "same_tokens": same,
        })  # fmt: skip
    batched = []
    for frac, by_batch in (new.get("batched", {}).get("engine") or {}).items():
        for batch, b in by_batch.items():
            a = ((old.get("batched", {}).get("engine") or {}).get(frac) or {}).get(batch)
            if a:
                batched.append({"fraction": frac, "batch": int(batch), "old_tok_s": round(a["tok_s_median"], 2),
                                "new_tok_s": round(b["tok_s_median"], 2),
                                "ratio": round(b["tok_s_median"] / a["tok_s_median"], 3)})  # fmt: skip
    return {"configs": rows, "batched": batched, "same_tokens_everywhere": same_all,
            "old_command": old.get("command"), "new_command": new.get("command")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = compare(json.loads(args.old.read_text()), json.loads(args.new.read_text()))
    for r in res["configs"]:
        print(f"{r['config']:<40} {r['old_tok_s']:>8} -> {r['new_tok_s']:>8} tok/s  x{r['ratio']}  "
              f"tokens {'same' if r['same_tokens'] else 'DIFFER'}")  # fmt: skip
    for r in res["batched"]:
        print(
            f"batch {r['batch']} at {r['fraction']:<6} {r['old_tok_s']:>8} -> {r['new_tok_s']:>8} tok/s  x{r['ratio']}"
        )
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0 if res["same_tokens_everywhere"] else 1


if __name__ == "__main__":
    sys.exit(main())
