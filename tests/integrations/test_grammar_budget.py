"""A grammar-constrained answer is complete at any budget (issue 10, item 1).

The engine passes `mask_logits` the stream's remaining budget (the token being
sampled included). When that comes down to the fewest tokens that complete
the value, the constraint allows only the next token of that completion, so
the text parses when the budget runs out. These tests drive the constraint as
the engine does (mask, pick the best token, advance, one token less), on the
real default model's tokenizer, with made-up logits instead of a model, so
nothing depends on a CPU's numerics:

- *a rambler*: always prefers to go on writing a string (never the closing quote);
- *a nester*: prefers to open arrays and objects and start optional keys;
- *noise*: seeded random logits.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from pbd_core.constraints import min_tokens_to_finish
from pbd_integrations import grammar
from pbd_integrations.grammar import json_schema_constraint, ll_tokenizer, tool_call_constraint
from pbd_integrations.json_completion import fewest_tokens, vocab_of
from pbd_integrations.penalties import DryPenalty, RepetitionPenalty
from pbd_integrations.tool_calls import parse_tool_calls

JOKE = {
    "type": "object",
    "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
    "required": ["setup", "punchline"],
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
                "required": ["id", "tags"],
            },
        },
    },
    "required": ["name", "items"],
}
SCALARS = {
    "type": "object",
    "properties": {
        "color": {"enum": ["green", "red", "blue"]},
        "n": {"type": "number"},
        "big": {"type": "integer", "minimum": 1000},
        "kind": {"const": "fixed value"},
        "flag": {"type": "boolean"},
        "maybe": {"anyOf": [{"type": "string", "minLength": 10}, {"type": "null"}]},
    },
    "required": ["color", "n", "big", "kind", "flag", "maybe"],
}
OPTIONAL = {  # optional keys whose values have required parts: starting one late must not break the end
    "type": "object",
    "properties": {
        "a": {"type": "string"},
        "extra": {
            "type": "object",
            "properties": {"x": {"type": "string"}, "y": {"type": "array", "items": {"type": "integer"}, "minItems": 2}},
            "required": ["x", "y"],
        },
        "more": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["a"],
}
FREE = {"type": "object"}  # any JSON object: nesting as deep as the model likes
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
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
        },
    },
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Whole-vocabulary vector ops, thousands of them: one thread is fastest (and no slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from pbd_integrations.registry import get_decoder

    return get_decoder("default").tokenizer


@pytest.fixture(scope="module")
def models(tokenizer):
    """Logit makers ``(seed) -> (step) -> logits``: the rambler, the nester and noise."""
    vocab = len(tokenizer)
    texts = [tokenizer.decode([t]) for t in range(vocab)]
    rambling = torch.tensor([0.0 if '"' not in s else -12.0 for s in texts])
    for word in (" cat", " and", " the", " a", "\\"):
        rambling[tokenizer.encode(word)[0]] += 6.0
    nesting = torch.tensor([6.0 if any(c in s for c in "[{,") else 0.0 for s in texts])

    def maker(bias: torch.Tensor):
        def make(seed: int):
            noise = torch.randn(64, vocab, generator=torch.Generator().manual_seed(seed))
            return lambda step: noise[step % 64] + bias  # a fresh tensor: the constraint masks it in place

        return make

    return {"rambler": maker(rambling), "nester": maker(nesting), "noise": maker(torch.zeros(vocab))}


def drive(tokenizer, constraint, budget: int, logits_at, prefix: str = "") -> str:
    """Decode as the engine does: ``prefix`` is written first (its tokens count against nothing)."""
    ids = tokenizer.encode(prefix) if prefix else []
    for token in ids:
        constraint.advance(token)
    step = 0
    while budget > 0 and not constraint.is_finished():
        token = int(torch.argmax(constraint.mask_logits(logits_at(step), budget)))
        constraint.advance(token)
        budget -= 1
        step += 1
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(ids)


def tokens_of(tokenizer, text: str) -> int:
    return len(fewest_tokens(vocab_of(ll_tokenizer(tokenizer)), text.encode()))


# --------------------------------------------------------------------------- the shortest completion


@pytest.mark.parametrize(
    ("schema", "prefix", "completion"),
    [
        # strings: close it; required keys that are still missing get the shortest value
        (JOKE, '{"setup": "Why did the', '", "punchline": ""}'),
        (JOKE, '{"setup": "Cats", "punchline": "Because', '"}'),
        (JOKE, "", '{"setup": "", "punchline": ""}'),
        # nested objects and arrays, minItems included
        (NESTED, '{"name": "bob", "items": [{"id": 12', ', "tags": [""]}]}'),
        (NESTED, '{"name": "bob", "items": [{"id": 1, "tags": ["x', '"]}]}'),
        (NESTED, '{"name": "bob", "items": [', '{"id": 0, "tags": [""]}]}'),
        (FREE, '{"a": [1, {"b": "c', '"}]}'),
        # enum values (the shortest one, or the rest of the one begun), const, numbers, booleans, null
        (SCALARS, '{"color": "', 'red", "n": 0, "big": 1000, "kind": "fixed value", "flag": true, "maybe": null}'),
        (SCALARS, '{"color": "g', 'reen", "n": 0, "big": 1000, "kind": "fixed value", "flag": true, "maybe": null}'),
        (SCALARS, '{"color": "red", "n": -', '0, "big": 1000, "kind": "fixed value", "flag": true, "maybe": null}'),
        (SCALARS, '{"color": "red", "n": 2.', '0, "big": 1000, "kind": "fixed value", "flag": true, "maybe": null}'),
        (SCALARS, '{"color": "red", "n": 2, "big": 5', '000, "kind": "fixed value", "flag": true, "maybe": null}'),
        (SCALARS, '{"color": "red", "n": 2, "big": 5000, "kind": "fixed value", "flag": true, "maybe": "ab', 'aaaaaaaa"}'),
    ],
)
def test_the_shortest_completion_closes_what_is_open(tokenizer, schema, prefix, completion) -> None:
    constraint = json_schema_constraint(tokenizer, schema)()
    for token in tokenizer.encode(prefix) if prefix else []:
        constraint.advance(token)
    assert constraint.completion_text() == completion
    assert constraint.min_tokens_to_finish() == tokens_of(tokenizer, completion)
    jsonschema.validate(json.loads(prefix + completion), schema)


@pytest.mark.parametrize(
    ("prefix", "completion"),
    [
        ('{"setup": "a\\', '"", "punchline": ""}'),  # an escape is finished first
        ('{"setup": "a\\u00', '00", "punchline": ""}'),
    ],
)
def test_an_open_escape_is_finished_before_the_string(tokenizer, prefix, completion) -> None:
    constraint = json_schema_constraint(tokenizer, JOKE)()
    for token in tokenizer.encode(prefix):
        constraint.advance(token)
    assert constraint.completion_text() == completion
    jsonschema.validate(json.loads(prefix + completion), JOKE)


def test_a_tool_call_is_completed_with_its_closing_tag(tokenizer) -> None:
    factory = tool_call_constraint(tokenizer, TOOLS, "required")
    constraint = factory()
    for token in tokenizer.encode('<tool_call>\n{"name": "shout", "arguments": {"word": "hel'):
        constraint.advance(token)
    assert constraint.completion_text() == '"}}\n</tool_call>'
    # Halfway through a tool's name only that tool's call can be finished, with its required arguments.
    constraint = factory()
    for token in tokenizer.encode('<tool_call>\n{"name": "a'):
        constraint.advance(token)
    assert constraint.completion_text() == 'dd", "arguments": {"a": 0, "b": 0}}\n</tool_call>'
    # From the start: the cheapest whole call.
    assert factory().completion_text() == '<tool_call>\n{"name": "shout", "arguments": {"word": ""}}\n</tool_call>'


def test_a_budget_of_exactly_the_closing_tokens_closes_the_json(tokenizer, models) -> None:
    prefix = '{"setup": "Why did the'
    constraint = json_schema_constraint(tokenizer, JOKE)()
    for token in tokenizer.encode(prefix):
        constraint.advance(token)
    budget = constraint.min_tokens_to_finish()
    assert budget == tokens_of(tokenizer, '", "punchline": ""}')
    text = drive(tokenizer, constraint, budget, models["rambler"](0))  # a model that would never close the string
    assert prefix + text == '{"setup": "Why did the", "punchline": ""}'
    assert constraint.cut_by_budget and constraint.is_finished()


def test_with_one_token_to_spare_the_model_still_chooses(tokenizer, models) -> None:
    prefix = '{"setup": "Why did the'
    constraint = json_schema_constraint(tokenizer, JOKE)()
    for token in tokenizer.encode(prefix):
        constraint.advance(token)
    budget = constraint.min_tokens_to_finish() + 1
    text = drive(tokenizer, constraint, budget, models["rambler"](0))
    data = json.loads(prefix + text)
    assert data["setup"].startswith("Why did the ") and len(data["setup"]) > len("Why did the")  # one more word
    assert data["punchline"] == ""


# --------------------------------------------------------------------------- every budget


CASES = {"joke": JOKE, "nested": NESTED, "scalars": SCALARS, "optional": OPTIONAL, "free": FREE}


@pytest.mark.parametrize("model", ["rambler", "nester", "noise"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_budget_from_the_minimum_up_yields_valid_json(tokenizer, models, name, model) -> None:
    schema = CASES[name]
    factory = json_schema_constraint(tokenizer, schema)
    least = factory().min_tokens_to_finish()
    budgets = range(least, least + 21) if model == "rambler" else range(least, least + 21, 4)
    for budget in budgets:
        constraint = factory()
        text = drive(tokenizer, constraint, budget, models[model](budget))
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("model", ["rambler", "nester", "noise"])
@pytest.mark.parametrize("tool_choice", ["required", "shout"])
def test_every_budget_from_the_minimum_up_yields_a_whole_tool_call(tokenizer, models, tool_choice, model) -> None:
    factory = tool_call_constraint(tokenizer, TOOLS, tool_choice)
    least = factory().min_tokens_to_finish()
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    budgets = range(least, least + 21) if model == "rambler" else range(least, least + 21, 5)
    for budget in budgets:
        text = drive(tokenizer, factory(), budget, models[model](budget))
        content, calls = parse_tool_calls(text)
        assert content == "" and len(calls) == 1, text
        assert text.endswith("</tool_call>")
        jsonschema.validate(calls[0].arguments, schemas[calls[0].name])


def test_a_budget_below_the_minimum_is_reported_before_decoding(tokenizer, models) -> None:
    constraint = json_schema_constraint(tokenizer, JOKE)()
    least = tokens_of(tokenizer, '{"setup": "", "punchline": ""}')
    assert constraint.min_tokens_to_finish() == least
    assert min_tokens_to_finish(constraint) == least  # what the engine calls; 0 for constraints without the method
    assert min_tokens_to_finish(object()) == 0
    # With one token fewer no decode can be valid, which is why the engine refuses to start.
    with pytest.raises(json.JSONDecodeError):
        json.loads(drive(tokenizer, constraint, least - 1, models["noise"](0)))


def test_far_from_the_end_nothing_is_searched(tokenizer, models, monkeypatch) -> None:
    calls = []
    search = grammar.shortest_completion
    monkeypatch.setattr(grammar, "shortest_completion", lambda *a, **k: calls.append(1) or search(*a, **k))
    logits_at = models["rambler"](0)
    for budget in (None, 5000):
        constraint = json_schema_constraint(tokenizer, JOKE)()
        for step in range(30):
            left = None if budget is None else budget - step
            constraint.advance(int(torch.argmax(constraint.mask_logits(logits_at(step), left))))
        # No budget: no search at all. A far one: the first step learns how far the end is, then nothing.
        assert len(calls) == (0 if budget is None else 1)


def test_without_a_budget_nothing_changes(tokenizer, models) -> None:
    constraint = json_schema_constraint(tokenizer, JOKE)()
    text = drive(tokenizer, constraint, 40, lambda step: models["rambler"](0)(step), prefix="")
    constraint_no_budget = json_schema_constraint(tokenizer, JOKE)()
    ids: list[int] = []
    logits_at = models["rambler"](0)
    for step in range(40):
        token = int(torch.argmax(constraint_no_budget.mask_logits(logits_at(step))))
        constraint_no_budget.advance(token)
        ids.append(token)
    assert not constraint_no_budget.is_finished()  # the rambler never closes a string by itself
    assert json.loads(text)  # while with the budget the same rambler ends with valid JSON


def test_the_repetition_penalty_wrapper_passes_the_budget_on(tokenizer, models) -> None:
    factory = json_schema_constraint(tokenizer, JOKE)
    wrapped = RepetitionPenalty(1.3, factory())
    least = wrapped.min_tokens_to_finish()
    assert least == factory().min_tokens_to_finish()
    text = drive(tokenizer, wrapped, least, models["rambler"](0))
    assert json.loads(text) == {"setup": "", "punchline": ""} and wrapped.cut_by_budget


# --------------------------------------------------------------------------- loops inside strings


def _penalised(tokenizer, constraint, text: str, candidate: str) -> float:
    """How much the constraint lowers ``candidate``'s logit after ``text``."""
    for token in tokenizer.encode(text):
        constraint.advance(token)
    token = tokenizer.encode(candidate)[0]
    logits = constraint.mask_logits(torch.zeros(len(tokenizer)))
    return -float(logits[token])


def test_a_phrase_loop_inside_a_json_string_is_penalised(tokenizer) -> None:
    factory = json_schema_constraint(tokenizer, JOKE)
    looping = '{"setup": "I\'m a cat, I\'m a cat, I\'m a'
    assert _penalised(tokenizer, factory(), looping, " cat") > 3  # the third round, well on its way
    assert _penalised(tokenizer, factory(), '{"setup": "I\'m a', " cat") == 0  # the first: nothing to repeat
    # The longer the repeat, the stronger the push away from it.
    assert _penalised(tokenizer, factory(), '{"setup": "I\'m a cat, I\'m', " a") < _penalised(tokenizer, factory(), looping, " cat")


def test_each_string_starts_afresh(tokenizer) -> None:
    # The setup's words may come back in the punchline: only repeats within one string count.
    text = '{"setup": "I\'m a cat, I\'m a cat", "punchline": "I\'m a'
    assert _penalised(tokenizer, json_schema_constraint(tokenizer, JOKE)(), text, " cat") == 0


def test_free_text_and_switched_off_control_are_left_alone(tokenizer) -> None:
    looping = "I'm a cat, I'm a cat, I'm a"
    auto = tool_call_constraint(tokenizer, TOOLS, "auto")()  # text outside any JSON
    assert _penalised(tokenizer, auto, looping, " cat") == 0
    off = json_schema_constraint(tokenizer, JOKE, string_repetition=None)()
    assert _penalised(tokenizer, off, '{"setup": "' + looping, " cat") == 0
    strong = json_schema_constraint(tokenizer, JOKE, string_repetition=DryPenalty(multiplier=2.0))()
    assert _penalised(tokenizer, strong, '{"setup": "' + looping, " cat") > 6
