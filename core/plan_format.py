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


def seed_text(title: str) -> str:
    """What a branch is conditioned on after the shared prefix."""
    return f"{STEP_MARKER}{title}:"


def planned_entry_text(title: str) -> str:
    """One entry of the title list, body elided."""
    return f"{STEP_MARKER}{title}:{ELISION}"


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
