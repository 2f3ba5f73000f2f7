"""The grammar masks' CUDA path (skipped without a GPU): `BatchMasks.allowed` on a CUDA device copies the
words from pinned memory and expands them on a side stream while the step queued before it still runs,
and the current stream waits for them. The masks must equal the host's, batch after batch (the pinned
words are rewritten each time), even when the step queued before them is long and the mask is used at
once on the current stream."""

from __future__ import annotations

import json

import pytest
import torch

from engine.api.protocol import Constraint
from engine.core.grammar import BatchMasks, Grammars
from engine.model.builtin import builtin_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "n": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "n", "tags"],
}


def test_masks_on_the_side_stream_equal_the_hosts():
    tok = builtin_tokenizer()
    grammars = Grammars(tok, len(tok))
    texts = ["", '{"name": "A', '{"name": "Ada", "n": 3', '{"name": "Ada", "n": 36, "tags": [']
    matchers = []
    for text in texts:
        m = grammars.matcher(Constraint("json", json.dumps(SCHEMA)))
        for t in tok.encode(text, add_special_tokens=False):
            m.advance(t)
        matchers.append(m)
    masks = BatchMasks(len(tok))
    cuda = torch.device("cuda")
    big = torch.randn(4096, 4096, device=cuda)
    logits = torch.randn(len(texts), len(tok), device=cuda)
    for rows in (matchers, matchers[1:3], matchers[:1], matchers):
        want = torch.stack([m.allowed() for m in rows])
        for _ in range(20):  # a long step queued before the masks: the side stream must not wait for it
            big = (big @ big).tanh_()
        got = masks.allowed(rows, cuda)
        # used at once, on this stream
        picked = torch.where(got, logits[: len(rows)], float("-inf")).argmax(-1)
        assert torch.equal(got.cpu(), want)
        assert all(bool(want[i, t]) for i, t in enumerate(picked.tolist()))
    torch.cuda.synchronize()
