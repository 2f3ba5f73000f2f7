"""What the soak sends: prompt texts from `<repo>/../shared/data`, a seeded mix of requests per concurrency
level, and the bad bodies mixed in.

Pure data, no I/O besides reading the prompt files: the same seed and level give the same requests in
every configuration, so greedy answers can be compared across configurations as well as against the
same prompt served alone. When the shared data is missing (a bare GPU machine has only the checkout),
the repository's own Markdown documents stand in, so the mix keeps its lengths.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

MAX_TOKENS = (8, 8, 12, 16, 16, 24, 32, 48, 64, 96)  # mostly short answers: the soak is about the path
LONG_TOKENS = (700, 1500)
MEDIUM_TOKENS = (60, 400)


@dataclass(frozen=True)
class Texts:
    short: list[str]  # chat questions, a few to ~60 tokens
    medium: list[str]  # exam questions, instructions
    long: list[str]  # prose passages, cut to length by `Workload`
    source: str


@dataclass(frozen=True)
class Spec:
    """One well-formed request."""

    key: str  # identity of (kind, prompt, max_tokens) for greedy comparisons
    kind: str  # "chat" | "completion" | "responses" (POST /v1/responses, the chat template's input)
    stream: bool
    prompt: str
    max_tokens: int
    temperature: float
    seed: int | None
    include_usage: bool
    disconnect_after: int | None  # close the stream after this many content chunks


@dataclass(frozen=True)
class Bad:
    """A body that must get a 4xx. `ok_200`: answering it normally is also right (e.g. a tiny temperature)."""

    name: str
    path: str
    body: str  # raw JSON text (a lone surrogate cannot go through json.dumps with ensure_ascii=False)
    ok_200: bool = False


def _jsonl(path: Path, field: str) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            value = rec.get(field)
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, str) and value.strip():
                out.append(value.strip())
    return out


def _mmlu(folder: Path, files: int = 6) -> list[str]:
    out = []
    for f in sorted(folder.glob("*.csv"))[:files]:
        with f.open(newline="", encoding="utf-8") as fh:
            for row in list(csv.reader(fh))[:20]:
                if len(row) >= 5:
                    opts = "\n".join(f"{c}. {o}" for c, o in zip("ABCD", row[1:5], strict=True))
                    out.append(f"{row[0]}\n{opts}\nAnswer:")
    return out


def _paragraphs(text: str, min_chars: int) -> list[str]:
    """Consecutive paragraphs glued until each piece has at least `min_chars` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        cur = f"{cur}\n\n{para.strip()}" if cur else para.strip()
        if len(cur) >= min_chars:
            out.append(cur)
            cur = ""
    return out


def find_data(repo: Path, override: Path | None) -> Path | None:
    for cand in (override, repo.parent / "shared" / "data", repo / "shared" / "data"):
        if cand is not None and cand.is_dir():
            return cand
    return None


def load_texts(repo: Path, data: Path | None) -> Texts:
    short: list[str] = []
    medium: list[str] = []
    long: list[str] = []
    used = []
    if data is not None:
        for name, field in (("vicuna_bench/question.jsonl", "turns"), ("mt_bench/question.jsonl", "turns")):
            if (data / name).is_file():
                short += _jsonl(data / name, field)
                used.append(name)
        if (data / "self_instruct/user_oriented_instructions.jsonl").is_file():
            medium += _jsonl(data / "self_instruct/user_oriented_instructions.jsonl", "instruction")
            used.append("self_instruct")
        if (data / "mmlu/test").is_dir():
            medium += _mmlu(data / "mmlu/test")
            used.append("mmlu/test")
        if (data / "wikitext-2/valid.txt").is_file():
            long += _paragraphs((data / "wikitext-2/valid.txt").read_text(encoding="utf-8")[:600_000], 9000)
            used.append("wikitext-2/valid.txt")
        gut = data / "gutenberg/gutenberg_valid.jsonl.gz"
        if gut.is_file():
            with gzip.open(gut, "rt", encoding="utf-8") as fh:
                book = json.loads(fh.readline())["text"]
            long += _paragraphs(book[20_000:400_000], 9000)
            used.append("gutenberg_valid (first book)")
    if not (short and medium and long):  # the checkout's own prose
        docs = "\n\n".join(
            p.read_text(encoding="utf-8") for p in sorted((repo / "docs").glob("*.md")) + [repo / "README.md"]
        )
        paras = [p.strip() for p in docs.split("\n\n") if len(p.strip()) > 40 and not p.startswith("|")]
        short = short or [p[:160] for p in paras if len(p) < 400][:200]
        medium = medium or _paragraphs(docs, 1200)[:200]
        long = long or _paragraphs(docs, 9000)
        used.append("repository docs (fallback)")
    return Texts(short, medium, long, ", ".join(used))


class Workload:
    """Seeded request mixes. `cut(text, n)` trims a text to about n tokens (the caller's tokenizer)."""

    def __init__(
        self,
        texts: Texts,
        cut,
        seed: int = 0,
        vocab_size: int = 4096,
        hostile: bool = False,
        responses: bool = True,
    ):
        """`responses`: about half of the chat requests go to POST /v1/responses instead (chosen by the
        prompt's hash, so the seeded mix is the same with and without)."""
        self.texts, self.cut, self.seed = texts, cut, seed
        self.vocab_size, self.hostile, self.responses = vocab_size, hostile, responses

    def _prompt(self, rng: random.Random) -> tuple[str, str]:
        r = rng.random()
        if r < 0.45:
            return "short", rng.choice(self.texts.short)
        if r < 0.90:
            return "medium", self.cut(rng.choice(self.texts.medium), rng.randint(*MEDIUM_TOKENS))
        return "long", self.cut(rng.choice(self.texts.long), rng.randint(*LONG_TOKENS))

    def spec(self, rng: random.Random, level: int, i: int) -> Spec:
        size, prompt = self._prompt(rng)
        kind = "chat" if rng.random() < 0.5 else "completion"
        if kind == "chat" and self.responses and zlib.crc32(prompt.encode()) % 2:
            kind = "responses"
        stream = rng.random() < 0.6
        max_tokens = rng.choice(MAX_TOKENS)
        greedy = rng.random() < 0.5
        disconnect = stream and max_tokens >= 24 and rng.random() < 0.33  # ~10% of all requests
        return Spec(
            key=f"{kind}|{max_tokens}|{size}|{zlib.crc32(prompt.encode()):08x}|{len(prompt)}",
            kind=kind,
            stream=stream,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0 if greedy else 0.8,
            seed=None if greedy else self.seed * 1000 + level * 100 + i,
            include_usage=stream and rng.random() < 0.7,
            disconnect_after=rng.randint(2, 4) if disconnect else None,
        )

    def level(self, level: int, n: int, replays: list[Spec], bads: list[Bad]) -> list[Spec | Bad]:
        """`n` requests for concurrency level `level`: ~25% replay `replays` (greedy, served alone before),
        the rest fresh; `bads` go in at seeded places (the caller spreads every bad body over the levels).
        With n >= 2 a level always has a disconnecting client, and a replay when there are replays; without
        replays (the reference level) it always has a greedy request that runs to its end."""
        rng = random.Random(self.seed * 7919 + level)
        out: list[Spec] = []
        replayed = []
        for i in range(n):
            if rng.random() < 0.25 and replays:
                replayed.append(i)
                out.append(self._replay(rng, rng.choice(replays)))
            else:
                out.append(self.spec(rng, level, i))
        fresh = [i for i in range(n) if i not in replayed]
        if (
            not replays
            and fresh
            and not any(out[i].temperature == 0 and not out[i].disconnect_after for i in fresh)
        ):
            out[fresh[0]] = replace(out[fresh[0]], temperature=0.0, seed=None, disconnect_after=None)
        if n >= 2 and not any(s.disconnect_after for s in out):
            j = fresh[-1] if fresh else n - 1  # never the greedy reference forced above (fresh[0])
            s = out[j]
            out[j] = replace(s, stream=True, max_tokens=max(s.max_tokens, 48), disconnect_after=3)
        if replays and n >= 2 and not replayed:
            out[0] = self._replay(rng, rng.choice(replays))
        mixed: list[Spec | Bad] = list(out)
        for bad in bads:
            mixed.insert(rng.randint(0, len(mixed)), bad)
        return mixed

    @staticmethod
    def _replay(rng: random.Random, base: Spec) -> Spec:
        stream = rng.random() < 0.6
        return replace(base, stream=stream, include_usage=stream, disconnect_after=None)

    def bad_requests(self) -> list[Bad]:
        c, x = "/v1/completions", "/v1/chat/completions"
        out = [
            Bad("unknown_model", c, '{"model": "no-such-model", "prompt": "hi", "max_tokens": 4}'),
            Bad("n_zero", c, '{"prompt": "hi", "max_tokens": 4, "n": 0}'),
            Bad("max_tokens_zero", x, '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}'),
            Bad("malformed_json", c, '{"prompt": "hi", "max_tokens": '),
            Bad("no_messages", x, '{"max_tokens": 4}'),
        ]
        if self.responses:
            r = "/v1/responses"
            out += [
                Bad("unknown_previous_response", r, '{"input": "hi", "previous_response_id": "resp_none"}'),
                Bad(
                    "image_input_part",
                    r,
                    '{"input": [{"role": "user", "content": [{"type": "input_image"}]}]}',
                ),
            ]
        if self.hostile:
            out += [
                Bad("token_id_vocab_size", c, f'{{"prompt": [{self.vocab_size}], "max_tokens": 4}}'),
                Bad("token_id_2_63", c, '{"prompt": [9223372036854775808], "max_tokens": 4}'),
                Bad(
                    "temperature_1e-300", c, '{"prompt": "hi", "max_tokens": 4, "temperature": 1e-300}', True
                ),
                Bad(
                    "lone_surrogate",
                    x,
                    '{"messages": [{"role": "user", "content": "hi \\ud800 there"}], "max_tokens": 4}',
                    True,
                ),
            ]
        return out


def long_prompt(texts: Texts, cut, tokens: int = 1500) -> str:
    return cut(max(texts.long, key=len), tokens)
