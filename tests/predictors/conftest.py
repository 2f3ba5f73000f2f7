"""Fixtures for the predictors tests: tiny checkpoints with a byte-level tokenizer, MMLU prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from families import write_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[2] / "../shared/data"
MMLU_TEST = SHARED_DATA / "mmlu" / "test"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 3 specials + 256 bytes = 259 ids (< the families' 320)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_checkpoint(family: str, out: Path, seed: int = 0) -> Path:
    write_checkpoint(family, out, seed=seed)
    byte_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint("qwen3_moe", tmp_path_factory.mktemp("qwen3_moe"))


@pytest.fixture(scope="session")
def deepseek_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint("deepseek_v2", tmp_path_factory.mktemp("deepseek_v2"))


@pytest.fixture(scope="session")
def mmlu_csv() -> Path:
    path = MMLU_TEST / "abstract_algebra_test.csv"
    if not path.exists():
        pytest.skip(f"MMLU data not found at {MMLU_TEST}")
    return path
