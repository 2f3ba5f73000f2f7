"""Text for training and evaluating the MoE language models of `bench/train_moe.py`, as token streams.

Layout read under a data folder (default `../shared/data`; on a GPU machine a copy carried in the repo):

    gutenberg/gutenberg_train.jsonl.gz   books (training text); gutenberg_valid.jsonl.gz (held-out books)
    wikitext-2/valid.txt, test.txt       out-of-domain held-out text (never trained on)
    mmlu/test/*.csv                      prompts for routing traces (read by predictors.collect.read_prompts)
    vicuna_bench, mt_bench, self_instruct, dolly_hhrlhf_small   chat prompts (the out-of-domain trace check)

Streams are numpy uint16 token ids (the built-in tokenizer has 4096 ids). Training text is two streams:
- books: every training book's text, books separated by `<|endoftext|>`;
- chat: pairs of consecutive paragraphs of the same books rendered with the built-in chat template,
  user = paragraph i, assistant = paragraph i+1 (single line breaks inside a paragraph joined), so the model
  learns the template's turn structure and to end its turn with `<|im_end|>`. No text but the books'.
WikiText-2 is the tokenised variant; `detok_wikitext` undoes its spacing (the rules of lm-evaluation-harness's
`wikitext_detokenizer`) so it reads like ordinary text; its `<unk>` placeholders stay.
Nothing here imports torch.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
TOKENIZER = ROOT / "engine" / "model" / "assets" / "tokenizer.json"
EOT = "<|endoftext|>"
CHAT_PROMPT_FILES = (
    "vicuna_bench/question.jsonl",
    "mt_bench/question.jsonl",
    "self_instruct/user_oriented_instructions.jsonl",
    "dolly_hhrlhf_small/dolly_hhrlhf_train_small.jsonl",
)
CHUNK_CHARS = 1 << 15  # texts are cut at paragraph ends into pieces of about this size for parallel encoding


def read_books(path: Path, max_chars: int | None = None) -> tuple[list[str], list[dict]]:
    """(texts, [{author, title, ebook, chars}]) of a Gutenberg `.jsonl.gz` file, in file order, stopping once
    `max_chars` are read (the last book cut)."""
    books, meta, seen = [], [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            text = rec["text"]
            if max_chars is not None and seen + len(text) > max_chars:
                text = text[: max(0, max_chars - seen)]
            books.append(text)
            meta.append({k: rec.get(k, "") for k in ("author", "title", "ebook")} | {"chars": len(text)})
            seen += len(text)
            if max_chars is not None and seen >= max_chars:
                break
    return books, meta


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each on one line (hard line wraps joined by spaces)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        p = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if p:
            out.append(p)
    return out


def render_chat(user: str, assistant: str) -> str:
    """One exchange in the built-in chat template (engine.model.builtin.CHAT_TEMPLATE), ending the turn."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def chat_examples(books: list[str], target_chars: int, seed: int) -> list[str]:
    """Chat-formatted paragraph pairs drawn at random from `books` until about `target_chars` are rendered."""
    pairs = []
    for book in books:
        ps = [p for p in paragraphs(book) if 40 <= len(p) <= 1200]
        pairs.extend(zip(ps, ps[1:], strict=False))
    if not pairs or target_chars <= 0:
        return []
    rng = random.Random(seed)
    out, total = [], 0
    while total < target_chars:
        user, assistant = pairs[rng.randrange(len(pairs))]
        out.append(render_chat(user, assistant))
        total += len(out[-1])
    return out


def detok_wikitext(text: str) -> str:
    """Undo WikiText's tokenised spacing (` @-@ `, ` , `, `( x )`, `= = h = =` ...)."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
        s = s.replace(a, b)
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "==")):
        s = s.replace(a, b)
    for a, b in (
        (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ):
        s = s.replace(a, b)
    return s


def _pieces(text: str) -> list[str]:
    """`text` cut after paragraph ends into pieces of about CHUNK_CHARS (concatenating them gives `text`)."""
    out, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        cut = text.find("\n\n", start + CHUNK_CHARS)
        if cut < 0:
            break
        out.append(text[start : cut + 2])
        start = cut + 2
    out.append(text[start:])
    return out


def load_tokenizer(path: Path = TOKENIZER):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode(tokenizer, texts: list[str], sep: str | None = None) -> np.ndarray:
    """All `texts` as one uint16 stream (each followed by the `sep` token when given), encoded in parallel."""
    sep_id = tokenizer.token_to_id(sep) if sep else None
    pieces, ends = [], []
    for text in texts:
        pieces.extend(_pieces(text))
        ends.append(len(pieces))
    batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = batch(pieces, add_special_tokens=False) if pieces else []
    parts, end_set = [], set(ends)
    for n, enc in enumerate(encodings, 1):
        parts.append(np.asarray(enc.ids, dtype=np.uint16))
        if sep_id is not None and n in end_set:
            parts.append(np.asarray([sep_id], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def byte_lengths(tokenizer) -> np.ndarray:
    """bytes[V]: UTF-8 bytes each token id stands for (0 for special tokens); for bits per byte."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for tok, i in vocab.items():
        out[i] = 0 if tok in special else len(tok)  # byte-level BPE: one symbol per byte
    return out


@dataclass
class Corpus:
    books: np.ndarray  # uint16 training stream
    chat: np.ndarray  # uint16 chat-formatted training stream
    heldout: dict[str, np.ndarray]  # name -> uint16 stream
    bytes_per_token: np.ndarray  # int64 [V]
    stats: dict = field(default_factory=dict)
    train_books: list[dict] = field(default_factory=list)  # author, title, ebook, chars (for attribution)


def load_corpus(
    data: Path,
    *,
    max_train_chars: int | None = None,
    max_heldout_chars: int | None = None,
    chat_share: float = 0.1,
    seed: int = 0,
) -> Corpus:
    """Tokenise the training books (+ the chat stream, `chat_share` of the books' characters) and held-out text."""
    tok = load_tokenizer()
    books, meta = read_books(data / "gutenberg" / "gutenberg_train.jsonl.gz", max_train_chars)
    chats = chat_examples(books, int(chat_share * sum(map(len, books))), seed)
    valid_books, _ = read_books(data / "gutenberg" / "gutenberg_valid.jsonl.gz", max_heldout_chars)
    texts = {"gutenberg_valid": valid_books}
    for split in ("valid", "test"):
        raw = (data / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8")
        texts[f"wikitext2_{split}"] = [detok_wikitext(raw)[:max_heldout_chars]]
    corpus = Corpus(
        books=encode(tok, books, sep=EOT),
        chat=encode(tok, chats),
        heldout={name: encode(tok, t, sep=EOT) for name, t in texts.items()},
        bytes_per_token=byte_lengths(tok),
        train_books=meta,
    )
    corpus.stats = {
        "train_books": len(books),
        "train_chars": sum(map(len, books)),
        "train_tokens": int(corpus.books.size),
        "chat_examples": len(chats),
        "chat_chars": sum(map(len, chats)),
        "chat_tokens": int(corpus.chat.size),
        "heldout": {
            name: {"chars": sum(map(len, t)), "tokens": int(corpus.heldout[name].size)}
            for name, t in texts.items()
        },
        "chars_per_token_train": sum(map(len, books)) / max(1, corpus.books.size),
    }
    return corpus


def mmlu_prompts(data: Path, seed: int) -> list[str]:
    """MMLU test questions (all subjects) as prompts, in a seeded random order (subjects mixed)."""
    from predictors.collect import read_prompts

    prompts = read_prompts(data / "mmlu" / "test")
    random.Random(seed).shuffle(prompts)
    return prompts


def chat_prompts(data: Path) -> tuple[list[str], list[str]]:
    """(prompts, files used) of the chat prompt sets that exist under `data`."""
    from predictors.collect import read_prompts

    prompts, used = [], []
    for rel in CHAT_PROMPT_FILES:
        path = data / rel
        if path.exists():
            prompts.extend(read_prompts(path))
            used.append(rel)
    return prompts, used
