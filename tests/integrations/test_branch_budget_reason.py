"""A branch whose grammar the budget cut short ends with ``finish_reason="length"``; one that completed, ``"stop"``.

The grammar constraint (`pbd_integrations.grammar`) forces the shortest completion of its
JSON as a stream's budget runs out, so a cut branch still parses; its finish reason must
still say that it was cut, as the trunk's does. The model is `ScriptedLM` (byte tokenizer)
with a real llguidance grammar, so which branch is cut is exact.
"""

from __future__ import annotations

import json

import pytest
from scripted_model import ScriptedLM, rules

from pbd_core import BranchEndEvent, FinalEvent, ParallelBranchDecoder, RawPrompt
from pbd_core.executors.base import DecodeBranches, NextTokens, StreamEnd
from pbd_core.options import DecodeOptions

pytest.importorskip("llguidance")

from pbd_integrations import grammar  # noqa: E402
from pbd_integrations.grammar import json_schema_constraint  # noqa: E402

LONG = '"' + "a" * 60 + '"'  # a string the model would go on writing well past any small budget
SHORT = '"b"'  # a value the model completes by itself


def decoder(*pairs: tuple[str, str]) -> ParallelBranchDecoder:
    model = ScriptedLM(rules(*pairs, ("####%%%%\n", "ok")))
    return ParallelBranchDecoder(model, model.tokenizer)


def run(d: ParallelBranchDecoder, constraint, **options) -> tuple[dict[str, tuple[str, str]], dict[int, str], str]:
    """``({title: (text, finish_reason)}, {branch index: reason in its BranchEndEvent}, answer finish)``."""
    events = list(d.stream(RawPrompt("Q\n"), constraint=constraint, **options))
    result = next(e.result for e in events if isinstance(e, FinalEvent))
    ended = {e.index: e.finish_reason for e in events if isinstance(e, BranchEndEvent)}
    return {b.title: (b.text, b.finish_reason) for b in result.branches}, ended, result.finish_reason


def test_a_branch_cut_by_max_branch_tokens_says_length_and_a_complete_one_says_stop() -> None:
    d = decoder(("####A:", LONG), ("####B:", SHORT))
    constraint = json_schema_constraint(d.tokenizer, {"type": "string"})
    branches, ended, _ = run(d, constraint, branches=["A", "B"], max_branch_tokens=8, max_new_tokens=200)
    text_a, reason_a = branches["A"]
    assert json.loads(text_a) == "a" * 6 and reason_a == "length"  # forced closed at its 8th token
    assert branches["B"] == (SHORT, "stop")
    assert ended == {0: "length", 1: "stop"}


def test_with_room_every_branch_completes_and_says_stop() -> None:
    d = decoder(("####A:", '"' + "a" * 10 + '"'), ("####B:", SHORT))
    constraint = json_schema_constraint(d.tokenizer, {"type": "string"})
    branches, ended, _ = run(d, constraint, branches=["A", "B"], max_branch_tokens=40, max_new_tokens=200)
    assert branches == {"A": ('"' + "a" * 10 + '"', "stop"), "B": (SHORT, "stop")}
    assert ended == {0: "stop", 1: "stop"}


def test_a_branch_cut_by_its_share_of_the_answer_budget_says_length() -> None:
    """The answer's budget, shared among live branches, forces A's string closed while there is budget left.

    D writes free text and ends on the plan marker at the very step A's string is forced closed,
    so the block goes on and the engine learns that A is complete from the executor: before the
    fix it reported ``stop`` for A although its text was cut.
    """
    import llguidance

    d = decoder(("####A:", LONG), ("####D:", "dd####"))
    lark = 'start: /"[a-z]*"/ | /d[a-z#]*/\n'  # A's quoted string, or D's free text
    constraint = grammar._factory(d.tokenizer, llguidance.LLMatcher.grammar_from_lark(lark))
    branches, ended, finish = run(d, constraint, branches=["A", "D"], max_branch_tokens=40, max_new_tokens=13)
    text_a, reason_a = branches["A"]
    assert text_a == '"aaaa"' and len(text_a) + 1 < 40  # closed by the answer's budget, not its own
    assert reason_a == "length" and ended[0] == "length"
    assert branches["D"] == ("dd", "end_marker")
    assert finish == "length"


class _Cut:
    """A constraint that is complete after one token, with or without the budget having forced it."""

    def __init__(self, forced: bool) -> None:
        self.cut_by_budget = forced
        self.done = False

    def mask_logits(self, logits, budget=None):
        return logits

    def advance(self, token_id) -> None:
        self.done = True

    def is_finished(self) -> bool:
        return self.done


@pytest.mark.parametrize(("forced", "reason"), [(True, "length"), (False, "stop")])
def test_the_executor_ends_a_complete_branch_by_how_it_was_completed(forced: bool, reason: str) -> None:
    d = decoder(("####A:", "x"))
    session = d.executor.session(DecodeOptions(temperature=0.0))
    prefix = d.tokenizer("Q\n")["input_ids"]
    seeds = [d.tokenizer("####A:")["input_ids"]]
    handle = session.run(DecodeBranches(prefix, seeds, max_tokens=10, stop=[], constraint=lambda: _Cut(forced)))
    [token] = session.run(NextTokens(handle, [0], 10))
    assert not isinstance(token, StreamEnd)
    [end] = session.run(NextTokens(handle, [0], 9))
    assert end == StreamEnd(reason)
    session.close()
