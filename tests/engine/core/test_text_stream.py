"""IncrementalDetokenizer and TextStream against a real byte-level BPE tokenizer trained in the test."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.core.logprobs import bytes_to_unicode
from engine.core.text_stream import IncrementalDetokenizer, TextStream

CORPUS = [
    "héllo wörld 日本語 🙂 naïve café über straße",
    "the quick brown fox jumps over the lazy dog",
    "Ünïcödé text: 你好世界, emoji 🙂🚀, accents àéîõü",
    "stop STOP end END the end",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    t.train_from_iterator(CORPUS * 5, trainer)
    return t


def stream_all(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    ts = TextStream(tokenizer, stop)
    pieces = []
    for i in ids:
        text, stopped = ts.push(i)
        pieces.append(text)
        if stopped:
            return pieces, True
    pieces.append(ts.finish())
    return pieces, ts.stopped


def test_multibyte_chars_are_split_across_tokens(tok):
    raw = ids_for_chars(tok, "🙂")  # four single-byte tokens; each alone decodes to U+FFFD
    assert tok.decode(raw[:1]) == "\ufffd"
    detok = IncrementalDetokenizer(tok)
    assert [detok.push(i) for i in raw] == ["", "", "", "🙂"]
    assert detok.flush() == ""


def test_flush_emits_an_incomplete_character_as_replacement(tok):
    detok = IncrementalDetokenizer(tok)
    raw = ids_for_chars(tok, "a🙂")[:3]
    assert [detok.push(i) for i in raw] == ["a", "", ""]
    assert detok.flush() == tok.decode(raw)[1:] == "\ufffd"


def test_encoded_text_round_trips_streamed(tok):
    for text in CORPUS:
        ids = tok.encode(text).ids
        pieces, stopped = stream_all(tok, ids)
        assert not stopped
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


def test_random_id_sequences_join_to_full_decode(tok):
    rng = random.Random(1234)
    vocab = tok.get_vocab_size()
    for _ in range(400):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        pieces, _ = stream_all(tok, ids)
        assert "".join(pieces) == tok.decode(ids), ids


def test_random_byte_tokens_of_multibyte_text(tok):
    """Sequences made of single-byte tokens cut multi-byte characters at every possible point."""
    alphabet = {c: i for c, i in tok.get_vocab().items() if len(c) == 1}
    b2c = bytes_to_unicode()
    rng = random.Random(7)
    for _ in range(200):
        text = "".join(rng.choice("aé日🙂 ß") for _ in range(rng.randrange(1, 12)))
        ids = [alphabet[b2c[b]] for b in text.encode()]
        # Mix in some merged tokens too.
        ids[rng.randrange(len(ids)) : rng.randrange(len(ids) + 1)] = tok.encode(rng.choice(CORPUS)[:10]).ids
        pieces, _ = stream_all(tok, ids)
        assert "".join(pieces) == tok.decode(ids)


def test_special_tokens_are_skipped(tok):
    eos = tok.token_to_id("<eos>")
    ids = tok.encode("héllo").ids + [eos]
    pieces, _ = stream_all(tok, ids)
    assert "".join(pieces) == "héllo"
    ts = TextStream(tok, (), skip_special_tokens=False)
    text = "".join(ts.push(i)[0] for i in ids) + ts.finish()
    assert text == "héllo<eos>"


def ids_for_chars(tok, text: str) -> list[int]:
    """One token per byte, so every stop string is split across several tokens."""
    alphabet = {c: i for c, i in tok.get_vocab().items() if len(c) == 1}
    b2c = bytes_to_unicode()
    return [alphabet[b2c[b]] for b in text.encode()]


def test_stop_split_across_tokens(tok):
    ids = ids_for_chars(tok, "héllo STOP wörld")
    pieces, stopped = stream_all(tok, ids, ("STOP",))
    assert stopped
    assert "".join(pieces) == "héllo "


def test_stop_at_the_very_start(tok):
    pieces, stopped = stream_all(tok, ids_for_chars(tok, "END and more"), ("END",))
    assert stopped and "".join(pieces) == ""


def test_first_of_two_stop_strings_wins(tok):
    pieces, stopped = stream_all(tok, ids_for_chars(tok, "a 日本 b 🙂 c"), ("🙂", "日本"))
    assert stopped and "".join(pieces) == "a "


def test_prefix_that_is_not_a_stop_is_released(tok):
    ids = ids_for_chars(tok, "the STO is not STOP")
    ts = TextStream(tok, ("STOP",))
    emitted = []
    for i in ids[: len("the STO")]:
        text, stopped = ts.push(i)
        assert not stopped
        emitted.append(text)
    assert "".join(emitted) == "the "  # "STO" held back: it may become "STOP"
    text, stopped = ts.push(ids[len("the STO")])  # " " disambiguates
    assert not stopped and text == "STO "
    rest = [ts.push(i) for i in ids[len("the STO ") :]]
    assert rest[-1][1] is True
    assert "".join(emitted) + "STO " + "".join(t for t, _ in rest) == "the STO is not "


def test_held_back_prefix_is_flushed_at_finish(tok):
    pieces, stopped = stream_all(tok, ids_for_chars(tok, "ends with ST"), ("STOP",))
    assert not stopped and "".join(pieces) == "ends with ST"
    assert pieces[-1] == "ST"


def test_stop_inside_multibyte_context(tok):
    pieces, stopped = stream_all(tok, ids_for_chars(tok, "日本語🙂語"), ("🙂",))
    assert stopped and "".join(pieces) == "日本語"


def test_push_after_stop_emits_nothing(tok):
    ts = TextStream(tok, ("x",))
    for i in ids_for_chars(tok, "ax"):
        ts.push(i)
    assert ts.stopped
    assert ts.push(ids_for_chars(tok, "b")[0]) == ("", True)
    assert ts.finish() == ""


def test_random_stops_match_reference(tok):
    """Streamed-with-stops text equals the full decode cut at the first stop occurrence."""
    rng = random.Random(99)
    for _ in range(300):
        text = "".join(
            rng.choice(["a", "b", "é", "日", "🙂", " ", "ab", "ba"]) for _ in range(rng.randrange(1, 15))
        )
        stops = tuple({rng.choice(["ab", "b é", "日🙂", "🙂", "aa", "zz"]) for _ in range(2)})
        ids = ids_for_chars(tok, text)
        pieces, stopped = stream_all(tok, ids, stops)
        cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
        expected = text[: min(cuts)] if cuts else text
        assert "".join(pieces) == expected, (text, stops)
        assert stopped == bool(cuts)


def test_works_with_a_transformers_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", clean_up_tokenization_spaces=False)
    rng = random.Random(5)
    for _ in range(50):
        ids = [rng.randrange(tok.get_vocab_size()) for _ in range(rng.randrange(1, 20))]
        pieces, _ = stream_all(hf, ids)
        assert "".join(pieces) == hf.decode(ids, skip_special_tokens=True)
