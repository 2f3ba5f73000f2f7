"""Shared fixtures: tiny checkpoints of every family, written once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from families import FAMILIES, write_checkpoint  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {f: write_checkpoint(f, root / f) for f in FAMILIES}


PROMPT_LEN, NEW_TOKENS = 24, 16


@pytest.fixture(scope="session")
def references(checkpoints) -> dict[str, tuple[list[int], torch.Tensor, list[int]]]:
    """family -> (prompt ids, prefill logits, greedy tokens) of the unmodified transformers model."""
    from transformers import AutoModelForCausalLM

    out = {}
    for fam in FAMILIES:
        ref = AutoModelForCausalLM.from_pretrained(checkpoints[fam], dtype=torch.float32).eval()
        ids = torch.randint(3, 300, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            logits = ref(ids).logits[0]
            toks = ref.generate(
                ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        out[fam] = (ids[0].tolist(), logits, toks[0, PROMPT_LEN:].tolist())
    return out
