"""A list of one title is not a plan (``single_title_plans=False``, the default; issue 11).

When the model closes its own list after one title, the engine drops the list and the
model answers directly: its first token may not start with ``#`` (`pbd_core.plan_gate`).
A block of one branch would decode nothing in parallel, only wrap the answer in a title
and a conclusion. Two or more titles, forced plans and caller-given titles are untouched.
"""

from __future__ import annotations

from scripted_model import ranked, rules, scripted_decoder

from pbd_core import RawPrompt


ONE_TITLE = rules(
    ("Q\n", "####Haiku:"),
    ("Haiku: ...\n####", "%%%%"),
    ("####Haiku:", " Soft rain.\n####"),
    ("####%%%%\n", "That was a haiku."),
)
DIRECT = rules(("Q\n", "Soft rain falls."))
TWO_TITLES = rules(
    ("Q\n", "####Tea:"),
    ("Tea: ...\n####", "Coffee:"),
    ("Coffee: ...\n####", "%%%%"),
    ("####Tea:", " calm.\n####"),
    ("####Coffee:", " strong.\n####"),
    ("####%%%%\n", "Both."),
)


def test_a_one_title_list_is_dropped_and_the_model_answers_directly():
    result = scripted_decoder(ranked(ONE_TITLE, DIRECT)).generate(RawPrompt("Q\n"))
    assert result.raw_text == "Soft rain falls."
    assert not result.parallel and result.branches == []
    assert result.stats.dropped_single_title_plans == 1
    assert result.stats.generated_tokens > len("Soft rain falls.")  # the dropped title was sampled


def test_the_option_keeps_the_block_of_one():
    result = scripted_decoder(ranked(ONE_TITLE, DIRECT)).generate(RawPrompt("Q\n"), single_title_plans=True)
    assert [(b.title, b.text) for b in result.branches] == [("Haiku", " Soft rain.\n")]
    assert result.raw_text == "####Haiku: Soft rain.\n####%%%%\nThat was a haiku."


def test_two_titles_are_a_plan():
    result = scripted_decoder(ranked(TWO_TITLES, DIRECT)).generate(RawPrompt("Q\n"))
    assert [b.title for b in result.branches] == ["Tea", "Coffee"] and result.parallel
    assert result.stats.dropped_single_title_plans == 0


def test_a_forced_plan_of_one_title_stays():
    result = scripted_decoder(ranked(ONE_TITLE, DIRECT)).generate(RawPrompt("Q\n"), force_plan=True)
    assert [b.title for b in result.branches] == ["Haiku"]
