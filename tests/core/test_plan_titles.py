"""Planned titles carry their subject (``descriptive_titles``, issue 11).

With the option, while the model plans, a title may not start with a number
(``1``, ``2.``) or a generic word (the ``Step`` of ``Step 1``): those tokens are
masked at the title's first token only (`pbd_core.titles`), so the model takes
its next choice. Caller-given titles are never touched. On by default (see
`DecodeOptions.descriptive_titles` for the measurement).
"""

from __future__ import annotations

import pytest
from scripted_model import ranked, rules, scripted_decoder
from tiny_models import byte_tokenizer

from pbd_core import DecodeOptions, RawPrompt
from pbd_core.executors.base import ExecutorStats
from pbd_core.stages import DecodeRun
from pbd_core.titles import DescriptiveTitles


def raw_text(result) -> str:
    return getattr(result, "raw_text", None) or result.text


def banned_texts(constraint: DescriptiveTitles) -> set[str]:
    ids = constraint.banned()
    return set() if ids is None else {constraint.tokenizer.decode([i]) for i in ids.tolist()}


NUMBERED = rules(
    ("Q\n", "Intro.\n####1:"),
    ("1: ...\n####", "2:"),
    ("2: ...\n####", "%%%%"),
    ("####1:", " one.\n####"),
    ("####2:", " two.\n####"),
    ("####%%%%\n", "Done."),
)
NAMED = rules(  # what the model writes when a number is not allowed
    ("Intro.\n####", "Apples:"),
    ("Apples: ...\n####", "Bananas:"),
    ("Bananas: ...\n####", "%%%%"),
    ("####Apples:", " red.\n####"),
    ("####Bananas:", " yellow.\n####"),
)


def test_a_model_that_would_number_its_titles_names_them():
    decoder = scripted_decoder(ranked(NUMBERED, NAMED))
    result = decoder.generate(RawPrompt("Q\n"), descriptive_titles=True)
    assert [(b.title, b.text) for b in result.branches] == [("Apples", " red.\n"), ("Bananas", " yellow.\n")]
    assert raw_text(result) == "Intro.\n####Apples: red.\n####Bananas: yellow.\n####%%%%\nDone."


def test_without_the_option_the_titles_are_numbers():
    decoder = scripted_decoder(ranked(NUMBERED, NAMED))
    result = decoder.generate(RawPrompt("Q\n"), descriptive_titles=False)
    assert [(b.title, b.text) for b in result.branches] == [("1", " one.\n"), ("2", " two.\n")]


def test_a_title_may_not_start_with_a_generic_word_token():
    """``Step 1`` starts with the token ``Step``: masked at a title's first token (a tokenizer with such tokens)."""
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["Step", " Step", "PART", "Steps", "Stepping"])
    constraint = DescriptiveTitles(tokenizer, tokenizer("Intro.\n####")["input_ids"])
    banned = {tokenizer.decode([i]) for i in constraint.banned().tolist()}
    assert banned == set("0123456789#") | {"Step", " Step", "PART"}
    for token in tokenizer("Steps")["input_ids"]:  # the title has started: its first-token mask is over
        constraint.advance(token)
    assert banned_texts(constraint) == set()


def test_a_title_may_not_be_an_answer_label():
    """Asked to end every step with ``Answer: <value>``, Qwen2.5-Coder-0.5B titled its steps ``Answer``
    (or ``Yes``): a title that names no subject. Those words alone are masked at a title's first token too."""
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["Answer", " answer", "Yes", "no", "Result", "Answers", "Nothing", "Yesterday"])
    constraint = DescriptiveTitles(tokenizer, tokenizer("Intro.\n####")["input_ids"])
    banned = {tokenizer.decode([i]) for i in constraint.banned().tolist()} - set("0123456789#")
    assert banned == {"Answer", " answer", "Yes", "no", "Result"}


def test_a_title_may_not_start_with_another_marker():
    """With ``Answer`` masked Qwen's next choice was `` ####``, over and over (``#### #### ####``): a title never
    starts with ``#``, so that is masked at a title's first token as well."""
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens([" ####", "##", "#include"])
    constraint = DescriptiveTitles(tokenizer, tokenizer("Intro.\n####")["input_ids"])
    banned = {tokenizer.decode([i]) for i in constraint.banned().tolist()}
    assert {"#", " ####", "##", "#include"} <= banned


QUESTION_HEADINGS = rules(  # what Qwen2.5-Coder-0.5B wrote: a question title ended by a line break, not ':'
    ("Q\n", "####What is 2 plus 2?\nAnswer: 4\n####What is 3 plus 3?\nAnswer: 6\n"),
)
ANSWER_IN_TITLE = rules(  # its next choice once a line break was masked: the title ran on into "? Answer:"
    ("####What is 2 plus 2?", " Answer:"),
)
QUESTION_TITLES = rules(  # the choice after that
    ("####What is 2 plus 2?", ":"),
    ("2 plus 2?: ...\n####", "What is 3 plus 3?:"),
    ("3 plus 3?: ...\n####", "%%%%"),
    ("####What is 2 plus 2?:", " Answer: 4\n####"),
    ("####What is 3 plus 3?:", " Answer: 6\n####"),
    ("####%%%%\n", "Done."),
)


def test_a_question_title_ends_with_a_colon_so_the_plan_is_read():
    """``####What is 2 plus 2?`` then a line break is a heading the plan reader cannot read (a title ends at
    ``:``), so the steps stayed plain text with ``####`` in what the user reads. With a line break masked
    alone, Qwen wrote ``What is 5 times 7? Answer:``. So after a title's ``?`` only a ``:`` may come."""
    decoder = scripted_decoder(ranked(QUESTION_HEADINGS, ANSWER_IN_TITLE, QUESTION_TITLES))
    result = decoder.generate(RawPrompt("Q\n"), descriptive_titles=True)
    assert [(b.title, b.text) for b in result.branches] == [
        ("What is 2 plus 2?", " Answer: 4\n"), ("What is 3 plus 3?", " Answer: 6\n")]
    assert "####" not in result.text


def test_without_the_option_a_question_heading_stays_text():
    decoder = scripted_decoder(ranked(QUESTION_HEADINGS, ANSWER_IN_TITLE, QUESTION_TITLES))
    result = decoder.generate(RawPrompt("Q\n"), descriptive_titles=False)
    assert result.branches == []
    assert result.raw_text == "####What is 2 plus 2?\nAnswer: 4\n####What is 3 plus 3?\nAnswer: 6\n"
    assert result.text == "What is 2 plus 2?\nAnswer: 4\nWhat is 3 plus 3?\nAnswer: 6\n"  # no unread marker


@pytest.mark.parametrize(
    "before, masked",
    [
        ("####What is 2 plus 2?", True),
        ("#### What is 2 plus 2? ", True),  # spaces after the '?' too
        ("####What is 2 plus 2", False),  # no '?' yet
        ("####Is it? Yes", False),  # the title went on after its '?'
        ("####What is 2 plus 2?: yes?", False),  # the title is over: the body's '?' is the model's
        ("####What?\nWhy?", False),  # a line break already ended it
        ("Why?", False),  # not a title
        ("####%%%%\nWhy?", False),  # the conclusion
    ],
)
def test_a_titles_question_mark_ends_it(before, masked):
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["\n\n", " \n", "?\n", " :"])
    constraint = DescriptiveTitles(tokenizer, [])
    for token in tokenizer(before)["input_ids"]:
        constraint.advance(token)
    banned = banned_texts(constraint)
    if not masked:
        assert not {"\n", "\n\n", " \n"} & banned
        return
    assert banned >= {"\n", "\n\n", " \n", "\r", "?\n", " ", "A", "?"}  # the title ends here:
    assert not {":", " :"} & banned  # only a colon may come next


def test_a_forced_plan_is_held_to_it_from_its_first_title():
    numbered = rules(("Q\n####", "1:"), ("1: ...\n####", "%%%%"), ("####1:", " one.\n####"))
    named = rules(("Q\n####", "Apples:"), ("Apples: ...\n####", "%%%%"), ("####Apples:", " red.\n####"))
    decoder = scripted_decoder(ranked(numbered, named))
    result = decoder.generate(RawPrompt("Q\n"), force_plan=True, descriptive_titles=True)
    assert [b.title for b in result.branches] == ["Apples"]


def test_caller_given_titles_are_left_alone():
    decoder = scripted_decoder(NUMBERED)
    for plan_in_view in (False, True):
        result = decoder.generate(RawPrompt("Q\n"), branches=["1", "2"], plan_in_view=plan_in_view,
                                  descriptive_titles=True)
        assert [b.title for b in result.branches] == ["1", "2"]
        assert raw_text(result).startswith("####1: one.\n####2: two.\n####%%%%\n")


def test_numbers_elsewhere_are_untouched():
    decoder = scripted_decoder(rules(
        ("Q\n", "In 2024 we had 3 goals.\n####Top 3 fruit:"),
        ("Top 3 fruit: ...\n####", "%%%%"),
        ("####Top 3 fruit:", " 1. apples, 2. pears.\n####"),
        ("####%%%%\n", "All 3 done."),
    ))
    result = decoder.generate(RawPrompt("Q\n"), descriptive_titles=True, single_title_plans=True)  # a list of one
    assert raw_text(result) == "In 2024 we had 3 goals.\n####Top 3 fruit: 1. apples, 2. pears.\n####%%%%\nAll 3 done."


FIRST_TOKEN = set("0123456789#")


@pytest.mark.parametrize(
    "before, banned",
    [
        ("Intro.\n####", FIRST_TOKEN),
        ("Intro.\n####  (", FIRST_TOKEN),  # spaces and brackets do not start the title yet
        ("####Step ", {"?\n"}),  # the title has started: only a '?' that ends its line is masked
        ("####Apples", {"?\n"}),
        ("####Top ", {"?\n"}),
        ("####Apples: ", set()),  # the title is over
        ("####Apples\n", set()),  # a line break ended it (malformed)
        ("####%%", {"?\n"}),  # the close marker, as far as it goes, reads like a title's start
        ("Intro.\n", set()),  # no title started
    ],
)
def test_which_tokens_are_banned_where(before, banned):
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["?\n"])
    constraint = DescriptiveTitles(tokenizer, [])
    for token in tokenizer(before)["input_ids"]:
        constraint.advance(token)
    assert banned_texts(constraint) == banned


def test_only_in_process_models_plan_under_the_mask():
    def run(token_constraints: bool, **options) -> DecodeRun:
        return DecodeRun(tokenizer=byte_tokenizer(), eos_token_ids=frozenset({256}), context_window=512,
                         executor_stats=ExecutorStats(), prompt_ids=[81], options=DecodeOptions(**options),
                         token_constraints=token_constraints)

    assert run(True, descriptive_titles=True).title_constraint
    assert not run(False, descriptive_titles=True).title_constraint  # a server samples on its own
    assert run(True).title_constraint  # on by default
    assert not run(True, descriptive_titles=False).title_constraint
    assert not run(True, descriptive_titles=True, branches=["1"]).title_constraint
    assert not run(True, descriptive_titles=True, parallel=False).title_constraint
