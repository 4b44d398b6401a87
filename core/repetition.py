"""Ending a stream that repeats itself (``DecodeOptions.repetition_guard``).

Small models under greedy decoding fall into loops: a branch writes
``- Farah: 45 years old`` and then the same line again until its budget is
gone. `RepetitionGuard` watches a stream and says when its tail is a loop, and
where the loop's first repeat starts, so the stages can end the stream there
with ``finish_reason="repetition"`` and cut the repeats from its text (one copy
of the repeated stretch stays, as the model wrote it).

Two rules; the stream loops when either says so.

**Token periods** (a loop repeats the same sampled tokens; nothing is
re-tokenized). For a period ``p`` (1 to `MAX_PERIOD` tokens), ``run[p]`` is how
many of the newest tokens each equal the token ``p`` before them: the newest
``run[p]`` tokens repeat the ``p`` tokens before them (a repeat may span several
copies). The stream loops when, for some ``p``, at least one whole copy is
repeated (``run[p] >= p``) and either

- the repeat is long: ``run[p] >= min_tokens`` (32 by default; e.g. ``"I'm a
  cat, I'm a cat, ..."``, or any stretch of 32 tokens written again), or
- the repeated unit is whole lines with substance: the last ``p`` tokens hold a
  line break and at least `LINE_MIN_ALNUM` letters or digits, so a line (or a
  block of lines) written twice in a row ends the stream at its second copy.

The cut is where the repeats start; when that is inside a line (the end of the
line before the first copy matched the end of the copy), it moves to that
line's end, so the copy that stays ends with its line.

**Numbered lines.** A complete line equal to the non-blank line before it once
a leading list marker (``7.``, ``8)``, ``-``, ``*``) is set aside, with at least
`LINE_MIN_ALNUM` letters or digits, is a loop too (``6. **Lemon-Cherry**`` /
``7. **Lemon-Cherry**``: the numbers keep the tokens from repeating). The cut is
the start of the second line.

**Repeated labels** (steps only: ``labels=True``, `DecodeOptions.repeated_label_guard`). A step
answers its own question once. A line that begins with a label an earlier line of the same step began
with (``Answer:`` twice; a word or a few, then ``:`` and a space or the line's end; a list marker or
``**`` aside) ends the step at the start of that line. Qwen2.5-Coder-0.5B's parallel branches did
this: after its own ``Answer: 110.82`` a branch went on with ``Answer: 124.91``, ``Answer: 335.81``,
the answers of the steps after it in the prompt's list (a step written after the others does not).
Lines with different labels (``Price: 10`` / ``Shipping: 5``, ``- Farah: 45`` / ``- Omar: 45``) never
fire, and the shared text never uses this rule (an answer without steps may well say ``Answer:``
twice).

What never fires: lists of similar lines (``1. apples`` / ``2. pears``,
``- Farah: 45`` / ``- Omar: 45``: no whole unit repeats), a line that recurs
with other lines between (``Answer: yes`` after two different questions), short
lines twice (``Yes`` / ``Yes``), short legitimate repeats (``| --- | --- |``, a
few zeros stay under 32 tokens), repeats longer than 128 tokens.

While a repeat may be in progress its text is held back from streaming (as the
start of a possible stop string is), so cutting never takes back text that was
already shown; it is released the moment the repeat breaks.
"""

from __future__ import annotations

import re
from collections import deque

MAX_PERIOD = 128
"""Longest repeated unit looked for, in tokens."""
DEFAULT_MIN_TOKENS = 32
"""Repeated tokens that end a stream whatever its unit (``repetition_guard=True``)."""
LINE_MIN_ALNUM = 10
"""Letters or digits a repeated line (or unit with a line break) needs to end the stream at its first repeat."""

_LABEL = re.compile(r"\s*(?:[-*\u2022+]\s+)?\**([A-Za-z][A-Za-z' -]{0,24}?)\s*\**\s*:\**(?:\s|$)")
"""A line that begins with a label: ``Answer: 5``, ``- **Total cost:** 12``, ``Answer:`` alone on its line."""
_LIST_MARKER = re.compile(r"(?:\d{1,3}[.)]|[-*\u2022+])\s+")
_MARKER_SO_FAR = re.compile(r"\s*(?:\d{1,3}[.)]?|[-*\u2022+])?\s*")  # a line start that may still become a marker


def guard_tokens(setting: bool | int) -> int:
    """The ``min_tokens`` of a ``repetition_guard`` option value; 0 when the guard is off."""
    if setting is True:
        return DEFAULT_MIN_TOKENS
    if setting is False or setting is None:
        return 0
    return int(setting)


class RepetitionGuard:
    """Watches one stream for a loop (see the module docstring).

    After every token: `update` with the stream's sampled ids, then `cut` with its text and
    ``ends`` (``ends[i]``: length of the text after token ``i``, as `pbd_core.detokenize.TextStream`
    keeps them) says where the loop's repeats start (a character offset) or ``None``, and
    `held_from` where streaming must stop for now.
    """

    def __init__(self, min_tokens: int = DEFAULT_MIN_TOKENS, labels: bool = False) -> None:
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
        self.min_tokens = min_tokens
        self.labels = labels  # a step: a line may not begin with a label an earlier line began with
        self._seen_labels: set[str] = set()
        self.seen = 0  # tokens of the stream taken in
        self.runs: dict[int, int] = {}  # period -> length of the current repeat (only non-zero runs)
        self._where: dict[int, deque[int]] = {}  # token id -> its recent positions (within MAX_PERIOD)
        self._line_start = 0  # where the line being written starts (character offset)
        self._last_line: str | None = None  # the last complete non-blank line, list marker set aside
        self._line_cut: int | None = None

    def update(self, token_ids: list[int]) -> None:
        """Take in the tokens of ``token_ids`` not seen yet (the stream's whole sampled list)."""
        for n in range(self.seen, len(token_ids)):
            token = token_ids[n]
            places = self._where.setdefault(token, deque())
            while places and n - places[0] > MAX_PERIOD:
                places.popleft()
            self.runs = {n - q: self.runs.get(n - q, 0) + 1 for q in places}
            places.append(n)
        self.seen = len(token_ids)

    def cut(self, text: str, ends: list[int]) -> int | None:
        """Character offset where the loop's repeats start, if the stream now loops; else None.

        When several repeats qualify, the earliest cut wins (the least text kept).
        """
        cuts = [c for c in (self._token_cut(text, ends), self._scan_lines(text), self._label_cut(text))
                if c is not None]
        return min(cuts) if cuts else None

    def held_from(self, text: str, ends: list[int]) -> int | None:
        """Character offset from which text may still be cut (a repeat may be in progress), or None."""
        held = []
        longest = max(self.runs.values(), default=0)
        if longest:
            held.append(_offset(ends, self.seen - longest))
        self._scan_lines(text)
        partial = text[self._line_start :]
        if self._last_line is not None:
            if _MARKER_SO_FAR.fullmatch(partial) or self._last_line.startswith(_normal(partial)):
                held.append(self._line_start)  # this line may turn out to be the last one again
        if self._seen_labels and self._line_cut is None and _may_become_label(partial, self._seen_labels):
            held.append(self._line_start)  # this line may turn out to repeat a label
        return min(held) if held else None

    def _token_cut(self, text: str, ends: list[int]) -> int | None:
        best = period = 0
        n = self.seen
        for p, run in self.runs.items():
            if run < p or run <= best:
                continue
            if run >= self.min_tokens or _is_line_unit(text[_offset(ends, n - p) : ends[n - 1]]):
                best, period = run, p
        if not best:
            return None
        cut = _offset(ends, n - best)
        # The repeats may start inside a line: keep that line whole.
        line_end = text.find("\n", cut, _offset(ends, n - best + period))
        return cut if line_end == -1 else line_end + 1

    def _label_cut(self, text: str) -> int | None:
        """The start of the line being written when it begins with a label an earlier line began with."""
        if not self.labels or self._line_cut is not None:
            return self._line_cut
        if self._repeats_label(text[self._line_start :]):
            self._line_cut = self._line_start
        return self._line_cut

    def _repeats_label(self, line: str) -> bool:
        """Whether ``line`` begins with a label an earlier line of the step began with."""
        label = _label(line)
        return label is not None and label in self._seen_labels

    def _scan_lines(self, text: str) -> int | None:
        """Read the lines completed since the last call; the start of a line that repeats the one before."""
        while self._line_cut is None:
            end = text.find("\n", self._line_start)
            if end == -1:
                break
            raw = text[self._line_start : end]
            line = _normal(raw)
            label = _label(raw + "\n") if self.labels else None
            if label is not None:
                if label in self._seen_labels:
                    self._line_cut = self._line_start
                    break
                self._seen_labels.add(label)
            if line:
                if line == self._last_line and sum(c.isalnum() for c in line) >= LINE_MIN_ALNUM:
                    self._line_cut = self._line_start
                    break
                self._last_line = line
            self._line_start = end + 1
        return self._line_cut


def _label(line: str) -> str | None:
    """The label a line begins with (lower case, spaces squeezed), or None.

    A line still being written (no line break yet) has a label only once a space follows its colon
    (``http:`` may yet become ``http://``).
    """
    match = _LABEL.match(line)
    if match is None or ("\n" not in line and not match.group(0)[-1:].isspace()):
        return None
    return " ".join(match.group(1).lower().split())


def _may_become_label(partial: str, seen: set[str]) -> bool:
    """Whether the line written so far may still turn out to begin with one of the ``seen`` labels."""
    if "\n" in partial:
        return False
    if _LABEL.match(partial) and partial[-1:].isspace():
        return False  # its label is known and was not a repeat (else the cut came first)
    words = " ".join(partial.lower().replace("*", " ").lstrip(" -\u2022+").split())
    return not words or any(label.startswith(words.rstrip(":").strip()) for label in seen)


def _normal(line: str) -> str:
    """A line without its surrounding spaces and its leading list marker."""
    line = line.strip()
    marker = _LIST_MARKER.match(line)
    return line[marker.end() :].strip() if marker else line


def _offset(ends: list[int], tokens: int) -> int:
    """Length of the text of the first ``tokens`` tokens."""
    return ends[tokens - 1] if tokens > 0 else 0


def _is_line_unit(unit: str) -> bool:
    return "\n" in unit and sum(c.isalnum() for c in unit) >= LINE_MIN_ALNUM
