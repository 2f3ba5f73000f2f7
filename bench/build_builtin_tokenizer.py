"""Train the built-in model's byte-level BPE tokenizer and write it to engine/model/assets/tokenizer.json.

Run once by a developer (the output is committed): reads public-domain books from
../shared/data/gutenberg (the first ~8 MB of the training split). Deterministic for a given input.

    python bench/build_builtin_tokenizer.py [--vocab 4096] [--mb 8]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gutenberg" / "gutenberg_train.jsonl.gz"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def texts(limit_bytes: int):
    seen = 0
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            yield t
            seen += len(t)
            if seen >= limit_bytes:
                return


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=ROOT / "engine" / "model" / "assets" / "tokenizer.json")
    args = ap.parse_args()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts(int(args.mb * 1e6)), trainer=trainer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
