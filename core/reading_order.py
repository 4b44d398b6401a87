"""Turn the engine's event stream into reading-order text chunks.

Branches are decoded side by side, but a reader (and a chat UI showing one
message) wants the answer as if it were written sequentially: branch 0 in
full, then branch 1, and so on. `ReadingOrder` streams the lowest unfinished
branch live and holds the others back; when a branch ends, everything the
next one wrote so far is flushed at once. Concatenating every chunk it
returns gives exactly `DecodeResult.raw_text` (the branch-format text);
`pbd_core.ReadableText` orders the same way and gives the readable
`DecodeResult.text`.
"""

from __future__ import annotations

from .types import BranchEndEvent, BranchStartEvent, FinalEvent, StreamEvent, TokenEvent


class ReadingOrder:
    """Feed events in, get reading-order text out.

    >>> order = ReadingOrder()
    >>> chunks = [c for e in events for c in order.feed(e)]  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._pending: dict[int, list[str]] = {}
        self._ended: set[int] = set()
        self._started: list[int] = []
        self._cursor = 0  # position in self._started of the branch shown live
        self._after_block: list[str] = []

    def _in_block(self) -> bool:
        return self._cursor < len(self._started)

    def feed(self, event: StreamEvent) -> list[str]:
        """Return the text that can be shown now, in reading order."""
        if isinstance(event, BranchStartEvent):
            self._started.append(event.index)
            self._pending[event.index] = []
            return []
        if isinstance(event, TokenEvent):
            if event.branch is None:
                if self._in_block():
                    self._after_block.append(event.text)
                    return []
                return [event.text] if event.text else []
            if self._in_block() and self._started[self._cursor] == event.branch:
                return [event.text] if event.text else []
            self._pending.setdefault(event.branch, []).append(event.text)
            return []
        if isinstance(event, BranchEndEvent):
            self._ended.add(event.index)
            return self._advance()
        if isinstance(event, FinalEvent):
            out = self._advance()
            # Anything still held back (an interrupted block) is flushed in order.
            while self._in_block():
                out.extend(self._pending.pop(self._started[self._cursor], []))
                self._cursor += 1
            out.extend(self._after_block)
            self._after_block = []
            return [c for c in out if c]
        return []

    def _advance(self) -> list[str]:
        out: list[str] = []
        while self._in_block() and self._started[self._cursor] in self._ended:
            self._cursor += 1
            if self._in_block():
                out.extend(self._pending.pop(self._started[self._cursor], []))
        if not self._in_block() and self._after_block:
            out.extend(self._after_block)
            self._after_block = []
        return [c for c in out if c]
