"""Reading the branch format from text."""

import pytest

from pbd_core.plan_format import branch_separator, read_title, seed_text, split_sections


@pytest.mark.parametrize(
    "text, status, title",
    [
        ("", "pending", ""),
        ("Chec", "pending", ""),
        ("Check A: body", "title", "Check A"),
        ("  Spaced :", "title", "Spaced"),
        ("%%", "pending", ""),
        ("%%%%", "close", ""),
        ("%%%%\nmore", "close", ""),
        ("title\nwith newline:", "malformed", ""),
        (":", "malformed", ""),
        ("#deeper heading:", "malformed", ""),
        ("x" * 200, "malformed", ""),
    ],
)
def test_read_title(text, status, title):
    read = read_title(text)
    assert (read.status, read.title) == (status, title)


def test_split_sections_reads_steps_of_sequential_text():
    text = "Intro\n####A: one\n####B: two\n####%%%%\nEnd"
    intro, sections, rest = split_sections(text)
    assert intro == "Intro\n"
    assert sections == [("A", " one\n"), ("B", " two\n")]
    assert rest == "####%%%%\nEnd"


def test_split_sections_without_steps_keeps_all_text_as_intro():
    assert split_sections("plain answer") == ("plain answer", [], "")


def test_seed_and_separator():
    assert seed_text("Step 1") == "####Step 1:"
    assert branch_separator("done.") == "\n" and branch_separator("done.\n") == ""
