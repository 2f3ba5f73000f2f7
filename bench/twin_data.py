"""Build the data folder `bench/train_twin.py` reads on a GPU machine, small enough to carry there.

    python bench/twin_data.py --src ../shared/data --dst .cache/twin_data   # then: --data .cache/twin_data

The device call carries at most 64 MiB with the repository; the full Gutenberg training file (38 MB) with
the rest does not fit. This copies WikiText-2, MMLU test, the chat prompt sets and Gutenberg-valid as they
are, and re-compresses the first `--books` share of the Gutenberg training books (0.8: 216 of 271 books,
77 M characters, about 19 M tokens, 30 MB), which is more text than a 10-minute twin run reads.
Imports only the standard library.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

COPY = (
    "gutenberg/gutenberg_valid.jsonl.gz",
    "wikitext-2/valid.txt",
    "wikitext-2/test.txt",
    "mmlu/test",
    "mt_bench/question.jsonl",
    "vicuna_bench/question.jsonl",
    "self_instruct/user_oriented_instructions.jsonl",
    "dolly_hhrlhf_small/dolly_hhrlhf_train_small.jsonl",
)
TRAIN = "gutenberg/gutenberg_train.jsonl.gz"


def build(src: Path, dst: Path, books: float) -> int:
    """Write the folder; returns its size in bytes."""
    for rel in COPY:
        s, d = src / rel, dst / rel
        if not s.exists():
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copyfile(s, d)
    with gzip.open(src / TRAIN, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    (dst / TRAIN).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dst / TRAIN, "wt", encoding="utf-8", compresslevel=9) as g:
        g.writelines(lines[: max(1, int(books * len(lines)))])
    return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--dst", type=Path, required=True)
    ap.add_argument("--books", type=float, default=0.8, help="share of the Gutenberg training books kept")
    args = ap.parse_args()
    size = build(args.src, args.dst, args.books)
    print(f"{args.dst}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
