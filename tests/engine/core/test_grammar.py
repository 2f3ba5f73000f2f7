"""engine.core.grammar and engine.core.tool_calls on the built-in tokenizer: masks, termination, refusals, parsing.

Also prints the mask time per token (compute the llguidance bitmask + expand it to a bool [V] tensor)
at the built-in vocabulary; `MOE_GRAMMAR_BENCH_TOKENIZER=<tokenizer.json>` measures another one too.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from engine.api.errors import InvalidRequest
from engine.api.protocol import Constraint
from engine.core.grammar import BatchMasks, Grammars
from engine.core.tool_calls import ParsedCall, ToolCallParser, generic_messages, parse_all
from engine.model.builtin import builtin_tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tok():
    return builtin_tokenizer()


@pytest.fixture(scope="module")
def grammars(tok):
    return Grammars(tok, len(tok))


def walk(grammars, tok, constraint, text):
    """Feed `text`'s tokens, checking each is in the mask; return the matcher."""
    m = grammars.matcher(constraint)
    for t in tok.encode(text, add_special_tokens=False):
        assert m.allowed()[t], (t, tok.decode([t]))
        m.advance(t)
    return m


def test_batch_masks_equal_each_rows_own_mask(grammars, tok):
    """The batched fill (one llguidance call for all rows) gives row i exactly matcher i's mask, whatever
    state each matcher is in, and the buffer is reused across steps of different batch sizes."""
    texts = ['{"name": "A', '{"name": "Ada", "age": 3', "", '{"name": "Ada", "age": 36, "tags": ["']
    matchers = [walk(grammars, tok, Constraint("json", json.dumps(PERSON)), t) for t in texts]
    matchers.append(walk(grammars, tok, Constraint("json", json.dumps({"type": "integer"})), "1"))
    masks = BatchMasks(len(tok))
    for rows in (matchers, matchers[1:3], matchers):
        got = masks.allowed(rows)
        assert got.shape == (len(rows), len(tok)) and got.dtype == torch.bool
        for i, m in enumerate(rows):
            assert torch.equal(got[i], m.allowed()), i
    assert not torch.equal(got[0], got[1])  # the rows differ: not one mask broadcast


def test_object_grammar_stops_after_its_last_brace(grammars, tok):
    text = json.dumps({"name": "Ada", "age": 36, "tags": ["a"]})
    m = walk(grammars, tok, Constraint("json", json.dumps(PERSON)), text)
    assert m.stopped


def test_eos_only_where_the_grammar_accepts(grammars, tok):
    m = walk(grammars, tok, Constraint("json", json.dumps({"type": "integer"})), "12")
    assert m.allowed()[tok.eos_token_id]  # "12" is complete, but "123" could follow
    m2 = grammars.matcher(Constraint("json", json.dumps(PERSON)))
    assert not m2.allowed()[tok.eos_token_id]


def test_mask_refuses_what_breaks_the_schema(grammars, tok):
    m = walk(grammars, tok, Constraint("json", json.dumps(PERSON)), '{"name": "Ada", "age": ')
    mask = m.allowed()
    assert not mask[tok.convert_tokens_to_ids('"')]  # a string where the integer must be
    assert mask.sum() < len(tok) // 4


@pytest.mark.parametrize(
    "schema",
    [{"type": "foo"}, {"not": {"type": "string"}}, {"type": "string", "pattern": "(?<=x)"}, {"$ref": "#/x"}],
)
def test_schemas_it_cannot_compile_are_invalid_requests(grammars, schema):
    with pytest.raises(InvalidRequest) as err:
        grammars.matcher(Constraint("json", json.dumps(schema)))
    assert err.value.param == "response_format"


def test_bad_tool_parameters_name_tools(grammars):
    with pytest.raises(InvalidRequest) as err:
        grammars.matcher(Constraint("tool_calls", functions=(("f", json.dumps({"type": "foo"})),)))
    assert err.value.param == "tools"


def test_forced_tool_call_grammar(grammars, tok):
    weather = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    functions = (("get_weather", weather), ("noop", json.dumps({"type": "object", "properties": {}})))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    m = walk(grammars, tok, Constraint("tool_calls", functions=functions), call)
    assert m.stopped  # one call only without parallel
    m = walk(grammars, tok, Constraint("tool_calls", functions=functions, parallel=True), call)
    assert not m.stopped and m.allowed()[tok.eos_token_id]
    with pytest.raises(AssertionError):  # a name that is not a tool's is outside the mask
        walk(grammars, tok, Constraint("tool_calls", functions=functions), '<tool_call>\n{"name": "other"')


def test_parser_streamed_equals_whole():
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": "{}"}\n</tool_call>\n'
    content, calls = parse_all(text)
    assert content == "Sure."
    assert calls == [ParsedCall("f", '{"a": 1}'), ParsedCall("g", "{}")]
    parser, events = ToolCallParser(), []
    for ch in text:
        events += parser.push(ch)
    events += parser.finish()
    assert "".join(e for e in events if isinstance(e, str)) == content
    assert [e for e in events if isinstance(e, ParsedCall)] == calls


@pytest.mark.parametrize(
    "text", ["plain text  ", "a <tool_ca", "x <tool_call>{not json}</tool_call> y", "<tool_call>{"]
)
def test_parser_leaves_other_text_alone(text):
    assert parse_all(text) == (text, [])


def test_generic_rendering():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    out = generic_messages(messages, tools)
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "f"' in out[0]["content"]
    assert out[1]["content"] == '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert out[2] == {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}


def _mask_time(tokenizer, label: str) -> float:
    g = Grammars(tokenizer, len(tokenizer))
    g.matcher(Constraint("json", "{}"))  # builds the tokenizer wrapper once
    text = json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["a", "b", "a"]})
    ids = tokenizer.encode(text, add_special_tokens=False)
    m = g.matcher(Constraint("json", json.dumps(PERSON)))
    logits = torch.randn(len(tokenizer))
    times = []
    for t in ids:
        start = time.perf_counter()
        logits.masked_fill(~m.allowed(), float("-inf"))
        times.append(time.perf_counter() - start)
        m.advance(t)
    median = sorted(times)[len(times) // 2]
    print(
        f"grammar mask per token ({label}, V={len(tokenizer)}): median {median * 1e6:.0f} us, max {max(times) * 1e6:.0f} us"
    )
    return median


def test_mask_time_per_token(tok):
    assert _mask_time(tok, "built-in") < 0.005  # far below a decode step; the GPU cost is measured apart
    other = os.environ.get("MOE_GRAMMAR_BENCH_TOKENIZER")
    if other:
        from transformers import PreTrainedTokenizerFast

        _mask_time(PreTrainedTokenizerFast(tokenizer_file=other, eos_token="<|im_end|>"), other)
