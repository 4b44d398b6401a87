"""Token ids to text, one token at a time, and string matching across tokens.

Stop strings and the ``####`` step marker are found in *decoded text*, never
in token ids, so they work for any tokenizer and when they span several
tokens. Decoding is incremental (the prefix/read-offset scheme used by
text-generation-inference): each token costs two short decodes, never a
re-decode of the whole stream.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any


class TextStream:
    """The text of one stream (trunk or branch), grown token by token.

    ``context_ids`` are tokens that precede the stream (e.g. a branch's title)
    and are decoded only so that the first token gets the right spacing.
    ``ends[i]`` is the length of ``text`` after token ``i``.
    """

    def __init__(self, tokenizer, context_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(context_ids[-4:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.token_ids: list[int] = []
        self.text = ""
        self.ends: list[int] = []

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Append a token; return the text it completes (may be empty for a partial UTF-8 character)."""
        self._ids.append(token_id)
        self.token_ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        delta = ""
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        self.text += delta
        self.ends.append(len(self.text))
        return delta

    def tokens_before(self, char_offset: int) -> int:
        """How many tokens lie entirely before ``char_offset``."""
        count = 0
        for end in self.ends:
            if end > char_offset:
                break
            count += 1
        return count


def find_first(text: str, needles: Iterable[str], start: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence of any needle in ``text[start:]``: ``(index, needle)`` or None."""
    best: tuple[int, str] | None = None
    for needle in needles:
        index = text.find(needle, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, needle)
    return best


def held_back(text: str, needles: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a needle.

    Streaming must not show text that may turn out to be the start of a stop
    string or a step marker.
    """
    longest = 0
    for needle in needles:
        for size in range(min(len(needle) - 1, len(text)), longest, -1):
            if text.endswith(needle[:size]):
                longest = size
                break
    return longest


@functools.lru_cache(maxsize=8)
def token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The text of every token id on its own (special tokens: ``""``), decoded once per tokenizer.

    For token masks that pick tokens by their text (`pbd_core.titles`, `pbd_core.branch_start`,
    `pbd_core.plan_gate`); SmolLM2's 49k tokens take about 0.3 s.
    """
    ids = [[i] for i in range(len(tokenizer))]
    batch_decode = getattr(tokenizer, "batch_decode", None)
    if batch_decode is not None:
        return tuple(batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return tuple(tokenizer.decode(i, skip_special_tokens=True) for i in ids)  # pragma: no cover
