"""Structured outputs against the REAL engine (built-in model on CPU) through the openai SDK.

The grammar makes even the 7M-parameter built-in model answer valid JSON: the schemas bound their
strings and numbers so that the answer also ends within a few dozen tokens.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.server_harness import Live

MSG = [{"role": "user", "content": "Answer in JSON."}]
S = {"type": "string", "maxLength": 10}
INT = {"type": "integer", "minimum": -50, "maximum": 50}


def obj(required: bool = True, **props) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required else [],
        "additionalProperties": False,
    }


SCHEMAS = [
    obj(name=S),
    obj(age=INT),
    obj(ok={"type": "boolean"}),
    obj(score={"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}),
    obj(color={"type": "string", "enum": ["red", "green", "blue"]}),
    obj(level={"enum": [1, 2, 3]}),
    obj(tags={"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 3}),
    obj(point=obj(x=INT, y=INT)),
    obj(user=obj(name=S, address=obj(city=S, zip={"type": "string", "pattern": "^[0-9]{5}$"}))),
    obj(
        items={"type": "array", "items": obj(id=INT, done={"type": "boolean"}), "minItems": 1, "maxItems": 2}
    ),
    obj(name=S, age=INT, admin={"type": "boolean"}),
    obj(required=False, name=S, nick=S),
    obj(value={"anyOf": [INT, {"type": "null"}]}),
    obj(matrix={"type": "array", "items": {"type": "array", "items": INT, "maxItems": 2}, "maxItems": 2}),
    obj(kind={"const": "circle"}, radius={"type": "number", "multipleOf": 0.25, "maximum": 5}),
    obj(
        status={"type": "string", "enum": ["open", "closed"]},
        count={"type": "integer", "minimum": 0, "maximum": 9},
    ),
    obj(flags=obj(a={"type": "boolean"}, b={"type": "boolean"}, c={"type": "boolean"})),
    obj(code={"type": "string", "pattern": "^[A-Z]{3}$"}, n=INT),
    {"type": "array", "items": INT, "minItems": 2, "maxItems": 3},
    obj(
        title=S,
        meta={
            "type": "object",
            "properties": {"lang": {"enum": ["en", "fr"]}},
            "required": ["lang"],
            "additionalProperties": False,
        },
    ),
]


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]
    retired: bool


@pytest.fixture(scope="module")
def live(real: Live) -> Live:
    return real  # the real engine (tests/server/conftest.py), not the fake one `live` is elsewhere


def chat(live: Live, **kw):
    kw = {"temperature": 0, "max_tokens": 96, **kw}
    return live.client.chat.completions.create(model=live.engine.model_card.id, messages=MSG, **kw)


def test_parse_returns_a_pydantic_object(live):
    r = live.client.chat.completions.parse(
        model=live.engine.model_card.id, messages=MSG, response_format=Person, max_tokens=64, temperature=0
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, Person)


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_answers_validate(live, i):
    schema = SCHEMAS[i]
    fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
    r = chat(live, response_format=fmt, seed=i, temperature=0.7)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object(live):
    r = chat(live, response_format={"type": "json_object"}, max_tokens=8)
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens, as OpenAI reports it
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8


def test_text_format_is_unconstrained(live):
    plain = chat(live, max_tokens=12).choices[0].message.content
    assert chat(live, max_tokens=12, response_format={"type": "text"}).choices[0].message.content == plain


def test_streamed_json_equals_non_streamed(live):
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS[10]}}
    whole = chat(live, response_format=fmt).choices[0].message.content
    parts = [
        c.choices[0].delta.content or "" for c in chat(live, response_format=fmt, stream=True) if c.choices
    ]
    assert "".join(parts) == whole


@pytest.mark.parametrize(
    "schema", [{"type": "foo"}, {"type": "string", "format": "no-such-format"}, {"not": {"type": "null"}}]
)
def test_schema_it_cannot_compile_is_a_400(live, schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    r = live.http.post("/v1/chat/completions", json={"messages": MSG, "response_format": fmt})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format"


def test_json_schema_type_needs_its_object(live):
    r = live.http.post(
        "/v1/chat/completions", json={"messages": MSG, "response_format": {"type": "json_schema"}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_concurrent_constrained_rows_each_keep_their_own_grammar(live):
    """Different schemas and free text decoded in the same batches (the batch's masks are filled
    together): every answer validates against its own schema, so no row got another row's mask."""
    from concurrent.futures import ThreadPoolExecutor

    picks = [0, 3, 6, 9, 10, None, None, 2]

    def one(j: int):
        i = picks[j]
        if i is None:
            return None, chat(live, max_tokens=24, seed=j, temperature=0.7)
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i], "strict": True}}
        return i, chat(live, response_format=fmt, seed=j, temperature=0.7)

    with ThreadPoolExecutor(len(picks)) as pool:
        results = list(pool.map(one, range(len(picks))))
    for i, r in results:
        if i is None:
            assert r.choices[0].message.content  # free text still flows beside constrained rows
            continue
        assert r.choices[0].finish_reason == "stop", (i, r.choices[0].message.content)
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS[i])
