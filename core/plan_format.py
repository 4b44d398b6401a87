"""The branch format the model writes, and how the engine reads it.

Sequentially, a parallelizable answer looks like (Yu et al., 2025)::

    Some intro.
    ####Check A: ... body of A ...
    ####Check B: ... body of B ...
    ####%%%%
    Conclusion.

Each step starts with ``####``, its title and a colon; ``####%%%%`` closes the
list. To plan, the engine lets the model write the first title, then forces
an elided body (``ELISION``) and the next ``####`` so the model lists every
title before writing any body. The list is then dropped from the cache and
every branch is seeded with ``####<title>:``.

A caller may give any non-empty title (``"Step 1: gather data"``, several
lines, ...): `render_title` writes it so it cannot be read as a delimiter, and
the caller's own text stays the title everywhere else (`BranchResult.title`,
branch events, what the adapters show).

Everything here works on decoded text, so it holds for any tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP_MARKER = "####"
CLOSE_MARKER = "####%%%%"
CLOSE_TEXT = CLOSE_MARKER + "\n"
"""What the engine writes to close a block: the marker and a line break, so the conclusion starts on a
fresh line (small models otherwise tend to keep writing ``%%%%``)."""
CLOSE_TAIL = "%%%%"
ELISION = " ...\n"
MAX_TITLE_CHARS = 120
"""Longest title `read_title` accepts from the model (a longer one is runaway text, not a title)."""

TITLE_COLON = "\uff1a"
"""How a ``:`` inside a title is written: FULLWIDTH COLON (see `render_title`)."""
TITLE_HASH = "\uff03"
"""How a ``#`` that would join or form a step marker is written: FULLWIDTH NUMBER SIGN."""
TITLE_PERCENT = "\uff05"
"""How a ``%`` that would form the close marker is written: FULLWIDTH PERCENT SIGN."""

LINE_BREAK_CLASS = r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]"
"""A regex character class of what `str.splitlines` splits at: a title never holds one."""
_LINE_BREAK = re.compile(r"\s*" + LINE_BREAK_CLASS + r"\s*")
_HASH_RUN = re.compile(r"^#+|#{4,}")
_LEADING_PERCENTS = re.compile(r"^%{4,}")


def render_title(title: str) -> str:
    """The text a title is written as in the branch format, between ``####`` and ``:``.

    In the format a title ends at its first ``:``, ``####`` starts a step and
    ``####%%%%`` closes the block, so a caller's title such as
    ``"Step 1: gather data"`` cannot be written as it is. Only what the format
    would read as a delimiter changes; everything else is kept, so for any title
    the model itself could write (`read_title`) this returns it unchanged:

    - a line break, with the spaces around it, becomes one space (a title is one
      line); leading and trailing whitespace is dropped (the format has none);
    - trailing colons are dropped (``"Summary:"`` is written ``####Summary:``,
      not with two colons) unless nothing else is left;
    - every other ``:`` is written as ``：`` (U+FF1A, FULLWIDTH COLON);
    - ``#`` at the start of the title (it would lengthen the ``####`` before it)
      and every ``#`` of a run of four or more (a step marker) is written ``＃``
      (U+FF03); a lone ``#`` inside (``"Issue #12"``) stays;
    - a run of four or more ``%`` at the start (with the ``####`` before it, the
      close marker) is written ``％％％％`` (U+FF05).

    Why the fullwidth colon rather than escaping or another rendering: it is
    the colon of CJK text, so models trained on multilingual data read it as a
    colon, and byte-level BPE vocabularies have it as one token (SmolLM2 and
    Qwen2.5: ``"Step 1： gather data"`` is exactly as many tokens as
    ``"Step 1: gather data"``). It keeps the meaning wherever the colon was
    (``"12：30"``, ``"http：//..."``, ``"Step 1： ..."``), which a dash or a
    comma would not, and an escape (``\\:``) or a quoted title would teach the
    model a syntax the format prompt never shows. The ``#`` and ``%`` cases are
    rare enough that naturalness matters less than never forming a marker.

    The result never contains ``:``, ``####``, ``%%%%`` or a line break, has no
    leading or trailing whitespace and never starts with ``#`` or ``%%%%``, so ``####<rendered>:`` reads back
    (`read_title`) as exactly ``<rendered>`` when it is at most
    ``MAX_TITLE_CHARS`` long.

    Raises:
        ValueError: for an empty or whitespace-only title (nothing to write).

    >>> render_title("Step 1: gather data")
    'Step 1： gather data'
    >>> render_title("  Summary:\\n")
    'Summary'
    """
    text = _LINE_BREAK.sub(" ", title).strip()
    if not text:
        raise ValueError(f"a branch title must contain a non-space character, got {title!r}")
    text = text.rstrip(":").rstrip() or text
    text = text.replace(":", TITLE_COLON)
    text = _HASH_RUN.sub(lambda m: TITLE_HASH * len(m.group()), text)
    return _LEADING_PERCENTS.sub(lambda m: TITLE_PERCENT * len(m.group()), text)


def seed_text(title: str) -> str:
    """What a branch is conditioned on after the shared prefix (the title rendered by `render_title`)."""
    return f"{STEP_MARKER}{render_title(title)}:"


def planned_entry_text(title: str) -> str:
    """One entry of the title list, body elided."""
    return f"{STEP_MARKER}{render_title(title)}:{ELISION}"


@dataclass(frozen=True)
class TitleRead:
    """What the text after a ``####`` says so far."""

    status: str  # "pending" | "title" | "close" | "malformed"
    title: str = ""


def read_title(text: str) -> TitleRead:
    """Classify the text the model wrote after a ``####`` marker.

    >>> read_title("Check A: x").title
    'Check A'
    >>> read_title("%%%%").status
    'close'
    >>> read_title("Che").status
    'pending'
    """
    if CLOSE_TAIL.startswith(text) and len(text) < len(CLOSE_TAIL):
        return TitleRead("pending")
    if text.startswith(CLOSE_TAIL):
        return TitleRead("close")
    colon = text.find(":")
    head = text if colon == -1 else text[:colon]
    if "\n" in head or STEP_MARKER in head or "#" in head.strip()[:1] or len(head) > MAX_TITLE_CHARS:
        return TitleRead("malformed")
    if colon == -1:
        return TitleRead("pending")
    title = head.strip()
    if not title:
        return TitleRead("malformed")
    return TitleRead("title", title)


_UNREAD_CLOSE = re.compile(re.escape(STEP_MARKER) + r"[ \t]*" + re.escape(CLOSE_TAIL))  # ``#### %%%%`` too


def unread_marker_span(text: str, marker: int, end: int) -> int | None:
    """How many characters of ``text[marker:end]`` an unread ``####`` covers, or None while that is not
    known yet: a close marker written where no block is open (``####%%%%``, or ``#### %%%%`` with spaces)
    goes whole, any other ``####`` alone. None means what follows may still become ``%%%%``.

    >>> unread_marker_span("#### %%%%\\nIt is 400.", 0, 20)
    9
    >>> unread_marker_span("#### What", 0, 9)
    4
    >>> unread_marker_span("#### %%", 0, 7) is None
    True
    """
    close = _UNREAD_CLOSE.match(text, marker, end)
    if close:
        return close.end() - marker
    pending = text[marker + len(STEP_MARKER) : end].lstrip(" \t")
    if len(pending) < len(CLOSE_TAIL) and CLOSE_TAIL.startswith(pending):
        return None
    return len(STEP_MARKER)


_SECTION = re.compile(r"####(?!%%%%)([^\n:#]{1,120}):")


def branch_separator(body: str) -> str:
    """Text written after a branch body in reading order, so the next ``####`` starts a line."""
    return "" if not body or body.endswith("\n") else "\n"


def split_sections(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """Split sequential text into (intro, [(title, body)], rest).

    Used to fill `DecodeResult.branches` for plain decoding, so parallel and
    sequential answers can be compared step by step. Only the first block is
    split; ``rest`` starts at the ``####`` that follows the last body (usually
    ``####%%%%``), or is empty.
    """
    first = _SECTION.search(text)
    if first is None:
        return text, [], ""
    intro, cursor, sections = text[: first.start()], first.start(), []
    while True:
        match = _SECTION.match(text, cursor)
        if match is None:
            break
        end = text.find(STEP_MARKER, match.end())
        end = len(text) if end == -1 else end
        sections.append((match.group(1).strip(), text[match.end() : end]))
        cursor = end
    return intro, sections, text[cursor:]
