"""What the user reads: the answer without the branch format.

The branch format (``####<title>:<body>`` ... ``####%%%%`` then the conclusion,
`pbd_core.plan_format`) is how the engine and the model talk; it is not the
answer a person should see. The readable rendering writes each step as a bold
title line, a blank line and the step's text, steps separated by blank lines,
then the conclusion::

    Intro text, as the model wrote it.

    **Tea**

    Tea is ...

    **Coffee**

    Coffee is ...

    In short, ...

Why a bold line rather than a Markdown heading: chat UIs render it as a title
and a plain-text reader (a terminal, a log) still reads ``**Tea**`` as one;
it does not claim a level in the document's heading hierarchy, which the model
often uses inside a step (``### Pros``); and a heading would start with ``#``,
which is what the format's ``####`` marker is made of, so an answer fed back
as an earlier assistant message could read as the protocol. A blank line
after the title is needed in Markdown: a single line break would join the
title and the text into one paragraph.

Only what the engine itself wrote is changed: the step markers it seeded each
branch with (replaced by the caller's own title, `BranchResult.title`, not
the rendered one with ``：``), the ``####%%%%`` it wrote after a block, and
whitespace around them; and one thing the model wrote: a ``####`` the engine
read as the start of a plan but could not read a title after
(`TokenEvent.unread_marker`: ``####Mia has 79 dollars. ...`` with no ``:``,
or ``#### Totals`` then a line break; a close marker where no block is open,
``#### %%%%``, goes whole), which goes with the spaces after it (and with the
line break after it when nothing visible comes before).
Other text the model wrote outside the engine's steps (an intro, a
conclusion, a plain answer, JSON, a tool call) is kept byte for byte, so an
answer without branches or markers is unchanged and structured output parses
as before. A model that writes the format itself in plain decoding
(``parallel=False`` without caller branches) is not rewritten: the engine did
not decode those steps, and text that merely looks like the format (inside a
JSON string, say) must not change.

Two ways to the same text:

- `render`: pure, from the answer's structure (text pieces and blocks of
  ``(title, body)`` steps);
- `ReadableText`: streaming, from the engine's events, in reading order; the
  concatenation of its chunks equals `render` of the same answer, and it is
  what fills `DecodeResult.text` (`readable_result`), so streamed content and
  the final text are the same by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, AsyncIterator, Literal, Union

from .options import OUTPUT_FORMATS
from .plan_format import CLOSE_MARKER, STEP_MARKER
from .reading_order import ReadingOrder
from .types import BranchEndEvent, BranchStartEvent, FinalEvent, StreamEvent, TokenEvent

OutputFormat = Literal["readable", "raw"]
"""`DecodeOptions.output_format`: what `DecodeResult.text` and the adapters' content hold."""

STEP_SEPARATOR = "\n\n"
"""Between a title line and its text, between steps, and between a block and the text around it."""

_WHITESPACE = re.compile(r"\s+")

Piece = Union[str, Sequence[tuple[str, str]]]
"""A part of an answer for `render`: text outside branches, or one parallel block as ``[(title, body), ...]``."""


def title_line(title: str) -> str:
    """A step's title as the reader sees it: ``**<title>**``, the caller's text on one line.

    Runs of whitespace (line breaks included: a bold span cannot cross a line)
    become one space; everything else is kept, ``:`` included.

    >>> title_line("Step 1: gather data")
    '**Step 1: gather data**'
    >>> title_line("  Two\\nlines ")
    '**Two lines**'
    """
    text = _WHITESPACE.sub(" ", title).strip()
    return f"**{text}**" if text else ""


def render_step(title: str, body: str) -> str:
    """One step: its title line, then (if the step wrote anything) a blank line and the body, stripped.

    >>> render_step("Tea", " Tea is hot.\\n")
    '**Tea**\\n\\nTea is hot.'
    >>> render_step("Tea", "")
    '**Tea**'
    """
    body = body.strip()
    return title_line(title) + (STEP_SEPARATOR + body if body else "")


def render_block(steps: Iterable[tuple[str, str]]) -> str:
    """A parallel block: its steps in order, separated by blank lines."""
    return STEP_SEPARATOR.join(render_step(title, body) for title, body in steps)


def separator_before_block(text_before: str) -> str:
    """What goes between the text before a block and its first title line: enough to make a blank line.

    Nothing when no visible text comes before (the answer starts with the block).

    >>> separator_before_block(""), separator_before_block("Intro:\\n"), separator_before_block("Intro.")
    ('', '\\n', '\\n\\n')
    """
    if not text_before.strip():
        return ""
    if text_before.endswith(STEP_SEPARATOR):
        return ""
    return "\n" if text_before.endswith("\n") else STEP_SEPARATOR


def render(pieces: Iterable[Piece]) -> str:
    """The readable answer from its structure, in reading order.

    ``pieces`` are text outside branches (an intro, a conclusion, a plain
    answer: kept as written) and parallel blocks (``[(title, body), ...]``,
    titles as the caller gave them, bodies as in `BranchResult.text`). Text
    right after a block loses its leading whitespace and is set off by a blank
    line; a block is set off from the text before it by `separator_before_block`.

    >>> render(["Compare.\\n", [("Tea", " hot.\\n"), ("Coffee", " strong.\\n")], "\\nBoth wake you up."])
    'Compare.\\n\\n**Tea**\\n\\nhot.\\n\\n**Coffee**\\n\\nstrong.\\n\\nBoth wake you up.'
    >>> render(["Just text.\\n"])
    'Just text.\\n'
    """
    out = ""
    after_block = False
    for piece in pieces:
        if isinstance(piece, str):
            text = piece
            if after_block:
                text = text.lstrip()
                if not text:
                    continue
                text = STEP_SEPARATOR + text
                after_block = False
            out += text
            continue
        steps = list(piece)
        if not steps:
            continue
        out += separator_before_block(out) + render_block(steps)
        after_block = True
    return out


# --------------------------------------------------------------------------- streaming


class _BranchState:
    """Where one branch's readable text stands."""

    __slots__ = ("seed_pending", "started", "pending_space")

    def __init__(self) -> None:
        self.seed_pending = True  # the engine's ``####<title>:`` header has not come yet
        self.started = False  # a non-space character of the body has been written
        self.pending_space = ""  # whitespace written after the body's last visible character


class ReadableEvents:
    """Engine events in, the same events with readable text out (still in decode order).

    Each `TokenEvent` maps to one `TokenEvent` (same branch, stage and token id;
    its text may be empty), each `BranchStartEvent` to itself plus a `TokenEvent`
    with the branch's title line; the other events pass through. Feed the
    result to a `ReadingOrder` for reading-order text (`ReadableText` does both).

    What changes (see the module docstring): a branch's first engine-written
    text (the ``####<title>:`` seed) becomes its title line; its body loses
    leading and trailing whitespace; the first trunk text the engine writes
    after a block (``####%%%%``) loses the marker; the text after a block loses
    its leading whitespace; an unread ``####`` (`TokenEvent.unread_marker`) and
    the spaces after it are dropped. Other trunk text before any block passes
    through as it is, chunk for chunk, so a plain answer's events are unchanged.
    """

    def __init__(self) -> None:
        self._branches: dict[int, _BranchState] = {}
        self._block: int | None = None  # the block being decoded (until the text after it starts)
        self._close_pending = False  # the next trunk text may be the engine's close marker
        self._after_block = False  # trunk text after a block: no visible character yet
        self._visible = False  # a non-space character is in the readable text (outside the open block)
        self._tail = ""  # the readable text's last characters (outside the open block)
        self._after_marker = False  # an unread ``####`` was left out; spaces right after it go too

    def feed(self, event: StreamEvent) -> list[StreamEvent]:
        """The readable counterpart of one event."""
        if isinstance(event, BranchStartEvent):
            return [event, TokenEvent(self._start(event), event.index, "parallel", None)]
        if isinstance(event, TokenEvent):
            if event.branch is None:
                text = self._trunk(event)
            else:
                text = self._branch_text(event)
            return [TokenEvent(text, event.branch, event.stage, event.token_id)]
        if isinstance(event, BranchEndEvent):
            self._branches.setdefault(event.index, _BranchState()).pending_space = ""
        return [event]

    def _start(self, event: BranchStartEvent) -> str:
        self._branches[event.index] = _BranchState()
        if self._block is None or event.block != self._block:  # the first step of a block
            separator = separator_before_block("*" + self._tail) if self._visible else ""
            self._block = event.block
            self._close_pending = True
            self._after_block = True
            self._visible, self._tail = True, "*"  # a block always ends with a visible character
            return separator + title_line(event.title)
        return STEP_SEPARATOR + title_line(event.title)

    def _branch_text(self, event: TokenEvent) -> str:
        state = self._branches.setdefault(event.branch, _BranchState())
        text = event.text
        if state.seed_pending:
            state.seed_pending = False
            if event.token_id is None and text.startswith(STEP_MARKER):
                return ""  # the engine's ``####<title>:``: the title line stands for it
        if not state.started:
            text = text.lstrip()
            if not text:
                return ""
            state.started = True
            text = STEP_SEPARATOR + text
        else:
            text = state.pending_space + text
        visible = text.rstrip()
        state.pending_space = text[len(visible) :]
        return visible

    def _trunk(self, event: TokenEvent) -> str:
        if event.unread_marker:  # the model's ``####`` that opened no plan: the reader does not see it
            self._after_marker = True
            return ""
        text = event.text
        if self._after_marker:  # nor the spaces after it (``#### What is ...``), nor a line break that
            # would open the answer (``#### %%%%`` and a line break, then a direct answer)
            text = text.lstrip(" \t") if self._visible else text.lstrip()
            if not text:
                return ""
            self._after_marker = False
        if self._close_pending and text:
            self._close_pending = False
            self._block = None
            if event.token_id is None and text.startswith(CLOSE_MARKER):
                text = text[len(CLOSE_MARKER) :]
        if self._after_block:
            text = text.lstrip()
            if not text:
                return ""
            self._after_block = False
            text = STEP_SEPARATOR + text
        if text:
            self._visible = self._visible or bool(text.strip())
            self._tail = (self._tail + text)[-len(STEP_SEPARATOR) :]
        return text


class ReadableText:
    """Engine events in, readable reading-order text chunks out.

    `ReadableEvents` followed by `ReadingOrder`: the first branch live, later
    ones as the earlier ones end. The chunks of a whole answer add up to its
    readable `DecodeResult.text`.

    >>> readable = ReadableText()
    >>> chunks = [c for e in events for c in readable.feed(e)]  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._events = ReadableEvents()
        self._order = ReadingOrder()

    def feed(self, event: StreamEvent) -> list[str]:
        """The readable text that can be shown now, in reading order."""
        return [chunk for mapped in self._events.feed(event) for chunk in self._order.feed(mapped)]


def text_order(output_format: OutputFormat = "readable") -> ReadableText | ReadingOrder:
    """The reading-order text of an event stream in ``output_format``: `ReadableText` or `ReadingOrder` (raw)."""
    check_output_format(output_format)
    return ReadableText() if output_format == "readable" else ReadingOrder()


def check_output_format(output_format: Any, name: str = "output_format") -> None:
    """Raise `ValueError` naming ``name`` unless ``output_format`` is ``"readable"`` or ``"raw"``."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"{name} must be one of {OUTPUT_FORMATS}, got {output_format!r}")


# --------------------------------------------------------------------------- the engine's result


class _ResultText:
    """Collects an answer's readable text from its events and puts it in the final `DecodeResult`."""

    def __init__(self, output_format: OutputFormat) -> None:
        check_output_format(output_format)
        self.output_format = output_format
        self.readable = ReadableText()
        self.parts: list[str] = []

    def see(self, item: Any) -> None:
        if self.output_format == "readable" and isinstance(item, (TokenEvent, BranchStartEvent, BranchEndEvent, FinalEvent)):
            self.parts.extend(self.readable.feed(item))
        if isinstance(item, FinalEvent):
            result = item.result
            if result.raw_text is None:
                result.raw_text = result.text
            if self.output_format == "readable":
                result.text = "".join(self.parts)


def readable_result(events: Iterator[Any], output_format: OutputFormat = "readable") -> Iterator[Any]:
    """Pass a run's events through; on its `FinalEvent`, set ``result.text`` to the readable text.

    ``result.raw_text`` keeps the branch-format text; with ``output_format="raw"``
    ``result.text`` stays the format text too. Closing this iterator closes
    ``events`` (so an abandoned decode frees its session).
    """
    text = _ResultText(output_format)
    try:
        for item in events:
            text.see(item)
            yield item
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


async def areadable_result(events: AsyncIterator[Any], output_format: OutputFormat = "readable") -> AsyncIterator[Any]:
    """Async `readable_result`."""
    text = _ResultText(output_format)
    try:
        async for item in events:
            text.see(item)
            yield item
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
