"""Grammar constraints: whatever the logits, the output is valid JSON for the schema.

Random logits stand in for an arbitrarily bad model. Schemas bound their
strings and arrays so a random walk ends within the step budget; validity
itself never depends on that.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from pbd_integrations.grammar import (
    GrammarError,
    close_objects,
    json_schema_constraint,
    ll_tokenizer,
    tool_call_constraint,
)
from pbd_integrations.tool_calls import parse_tool_calls

SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}, "required": ["ok", "n"]},
    {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
            "note": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]},
        },
        "required": ["color", "tags"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "shout",
            "parameters": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 5}}, "required": ["word"]},
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def tokenizer():
    from pbd_integrations.registry import get_decoder

    return get_decoder("default").tokenizer


def random_decode(tokenizer, factory, seed: int, steps: int = 200) -> tuple[str, bool]:
    """Sample from random logits under the constraint; return the text and whether it finished."""
    constraint = factory()
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    vocab = len(tokenizer)
    for _ in range(steps):
        token = int(torch.argmax(constraint.mask_logits(torch.randn(vocab, generator=generator))))
        constraint.advance(token)
        ids.append(token)
        if constraint.is_finished():
            return tokenizer.decode(ids), True
    return tokenizer.decode(ids), False


@pytest.mark.parametrize("schema", SCHEMAS, ids=["scalars", "enum-array-nullable", "top-level-array"])
@pytest.mark.parametrize("seed", range(3))
def test_json_output_always_validates(tokenizer, schema: dict, seed: int) -> None:
    text, finished = random_decode(tokenizer, json_schema_constraint(tokenizer, schema), seed)
    assert finished, text
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("seed", range(4))
def test_required_tool_call_always_parses_and_validates(tokenizer, seed: int) -> None:
    text, finished = random_decode(tokenizer, tool_call_constraint(tokenizer, TOOLS, "required"), seed)
    assert finished, text
    content, calls = parse_tool_calls(text)
    assert content == "" and len(calls) == 1
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(calls[0].arguments, schemas[calls[0].name])


@pytest.mark.parametrize("seed", range(2))
def test_named_tool_choice_forces_that_tool(tokenizer, seed: int) -> None:
    text, _ = random_decode(tokenizer, tool_call_constraint(tokenizer, TOOLS, "shout"), seed)
    assert [c.name for c in parse_tool_calls(text)[1]] == ["shout"]


def test_auto_allows_text_or_a_call_but_never_a_broken_call(tokenizer) -> None:
    factory = tool_call_constraint(tokenizer, TOOLS, "auto")
    first = factory().allowed_tokens()
    assert first[tokenizer.encode("Hello")[0]] and first[tokenizer.encode("<")[0]]
    # Once the call tag is written, only the JSON of a call can follow.
    constraint = factory()
    for token in tokenizer.encode("<tool_call>\n"):
        constraint.advance(token)
    allowed = constraint.allowed_tokens().nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).startswith("{") for t in allowed)


def test_padded_vocabulary_rows_are_masked(tokenizer) -> None:
    constraint = json_schema_constraint(tokenizer, SCHEMAS[0])()
    logits = constraint.mask_logits(torch.zeros(len(tokenizer) + 64))
    assert torch.isinf(logits[len(tokenizer) :]).all()


def test_each_factory_call_is_an_independent_state(tokenizer) -> None:
    factory = json_schema_constraint(tokenizer, SCHEMAS[0])
    one, two = factory(), factory()
    start = one.allowed_tokens().clone()
    one.advance(int(start.nonzero()[0]))
    assert not torch.equal(one.allowed_tokens(), start)
    assert torch.equal(two.allowed_tokens(), start)


def test_the_llguidance_tokenizer_is_built_once(tokenizer) -> None:
    assert ll_tokenizer(tokenizer) is ll_tokenizer(tokenizer)


def test_bad_requests_fail_before_decoding(tokenizer) -> None:
    with pytest.raises(ValueError, match="not one of the bound tools"):
        tool_call_constraint(tokenizer, TOOLS, "nope")
    with pytest.raises(ValueError, match="at least one tool"):
        tool_call_constraint(tokenizer, [], "required")
    with pytest.raises(GrammarError):
        json_schema_constraint(tokenizer, {"type": "object", "properties": {"a": {"type": "no-such-type"}}})


def test_close_objects_forbids_extra_keys_only_where_unspecified() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"x": {}}}, "free": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed["properties"]["free"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the caller's schema is untouched


@pytest.mark.parametrize("seed", range(2))
def test_auto_with_a_response_schema_yields_a_call_or_valid_json(tokenizer, seed: int) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    factory = tool_call_constraint(tokenizer, TOOLS, "auto", response_schema=schema)
    text, finished = random_decode(tokenizer, factory, seed)
    assert finished, text
    content, calls = parse_tool_calls(text)
    if calls:
        assert content == "" and calls[0].name in {t["function"]["name"] for t in TOOLS}
    else:
        jsonschema.validate(json.loads(content), schema)
