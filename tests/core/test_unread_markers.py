"""A ``####`` that opened no plan is not shown to the reader (issue 11, "What the user reads").

While it plans, the engine reads a title after every ``####`` the model writes. When none can be read (a
line break, 120 characters or the end of the answer before ``:``), the model's text stays as it was:
Qwen2.5-Coder-0.5B opened direct answers with ``####Mia has 79 dollars. She spends ...``. Such a marker
goes out as a `TokenEvent` of its own with ``unread_marker=True``: the raw text keeps it, the readable text
(the default ``DecodeResult.text`` and what the adapters show) leaves it out, with the spaces after it.
"""

from __future__ import annotations

import pytest
from scripted_model import decoder_for

from pbd_core import RawPrompt, TokenEvent
from pbd_core.readable import text_order


@pytest.mark.parametrize(
    "written, readable",
    [
        ("####Mia has 9 dollars. She has 9.", "Mia has 9 dollars. She has 9."),  # the answer ends in the "title"
        ("####no colon on this line\nso just text.", "no colon on this line\nso just text."),
        ("#### Totals\nIt is 4.", "Totals\nIt is 4."),  # a Markdown heading: its space goes too
        ("Costs #### money.", "Costs money."),
        ("####%%%% closed before any step.", "closed before any step."),  # a close marker with no block
        ("#### %%%%\n16 times 25 is 400.", "16 times 25 is 400."),  # Qwen, with a spaced close marker
        ("####%%%%\nIt is 400.", "It is 400."),  # the line break that would open the answer goes too
        ("Intro.\n#### %%%%\nIt is 400.", "Intro.\n\nIt is 400."),  # after text, line breaks stay
        ("Intro.\n####A\nB\n####C\nD", "Intro.\nA\nB\nC\nD"),  # every unread marker
    ],
)
def test_the_reader_does_not_see_a_marker_that_opened_no_plan(written, readable):
    result = decoder_for(("Q\n", written), leak_guard=()).generate(RawPrompt("Q\n"))
    assert result.branches == [] and not result.parallel
    assert result.raw_text == written
    assert result.text == readable


def test_the_raw_format_keeps_it():
    result = decoder_for(("Q\n", "####Mia\nShe has 9."), leak_guard=()).generate(RawPrompt("Q\n"), output_format="raw")
    assert result.text == result.raw_text == "####Mia\nShe has 9."


def test_streamed_chunks_add_up_to_the_text_in_both_formats():
    decoder = decoder_for(("Q\n", "Sure.\n#### Mia\nShe has 9."), leak_guard=())
    events = list(decoder.stream(RawPrompt("Q\n"), output_format="raw"))
    markers = [e for e in events if isinstance(e, TokenEvent) and e.unread_marker]
    assert [(m.text, m.token_id, m.branch) for m in markers] == [("####", None, None)]
    for output_format, expected in (("readable", "Sure.\nMia\nShe has 9."), ("raw", "Sure.\n#### Mia\nShe has 9.")):
        order = text_order(output_format)
        assert "".join(chunk for event in events for chunk in order.feed(event)) == expected


def test_plain_decoding_and_plans_are_untouched():
    """Without planning (``parallel=False``) the engine reads no titles: the model's format is its text."""
    decoder = decoder_for(("Q\n", "####Mia\nShe has 9."), leak_guard=())
    assert decoder.generate(RawPrompt("Q\n"), parallel=False).text == "####Mia\nShe has 9."
    planned = decoder_for(
        ("Q\n", "####Tea:"), ("Tea: ...\n####", "Coffee:"), ("Coffee: ...\n####", "%%%%"),
        ("####Tea:", " calm.\n####"), ("####Coffee:", " strong.\n####"), ("####%%%%\n", "Both."),
    ).generate(RawPrompt("Q\n"))
    assert planned.text == "**Tea**\n\ncalm.\n\n**Coffee**\n\nstrong.\n\nBoth."


def test_a_step_after_the_last_block_the_engine_plans_is_read_as_text(monkeypatch):
    """After `MAX_BLOCKS` blocks the engine plans no more; a runaway answer's further ``####City:`` steps
    (Qwen looped over tool results that way at 512 tokens) are the model's text without the marker."""
    import pbd_core.stages

    monkeypatch.setattr(pbd_core.stages, "MAX_BLOCKS", 1)
    decoder = decoder_for(
        ("Q\n", "####A:"), ("A: ...\n####", "B:"), ("B: ...\n####", "%%%%"),
        ("####A:", " a.\n####"), ("####B:", " b.\n####"),
        ("####%%%%\n", "Again:\n####C: c.\n####%%%%\nDone."),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"))
    assert [b.title for b in result.branches] == ["A", "B"]
    assert result.raw_text == "####A: a.\n####B: b.\n####%%%%\nAgain:\n####C: c.\n####%%%%\nDone."
    assert result.text == "**A**\n\na.\n\n**B**\n\nb.\n\nAgain:\nC: c.\n\nDone."
