"""Planned titles that carry their subject (``DecodeOptions.descriptive_titles``).

A branch sees the shared prefix and its own title only, so a plan of ``1``,
``2``, ``Step 1``, ``Part 2`` leaves every branch guessing what it is about
(in plain decoding ``####Step 1: gather data`` is harmless: the subject follows
in the same step; in a branch it is never seen by the others). While the model
plans, `DescriptiveTitles` masks, at the *first token of a title only* (right
after ``####``; spaces and ``(``/``[`` aside):

- every token whose text starts with a digit (``1``, `` 2``, ``3.``);
- every token that is a generic word on its own (`GENERIC_WORDS`: ``Step``,
  `` part``, ``PHASE``, ...: what ``Step 1`` or ``Part 2`` starts with), or an
  answer label (``Answer``, ``Result``, ``Yes``, ``No``): asked to end each step
  with ``Answer: <value>``, Qwen2.5-Coder-0.5B titled its steps ``####Answer:``
  (one title, then the next ``####Answer:``), which names no subject and ends
  the list at its repeat. With these masked it planned blocks of two or more
  branches on 31 of 40 parallelizable prompts (was 28) and on the same 4 of 36
  single prompts, and the plans with one title per task step rose from 3 to 22
  (`benchmarks/quality/planning_prompts.py --prompts planning-default`);
- every token that starts with ``#``: with ``Answer`` masked, Qwen's next
  choice was `` ####`` again and again (``#### #### ####`` as the answer). With
  both, 32 of 40 and 4 of 36; the sub-questions whose titles had been
  ``Answer`` are now titled with their question, though Qwen then ended the
  title with a line break instead of ``:`` (``#### What is 5 times 7?`` then a
  line break: a Markdown heading, which the plan reader cannot read);
- *after a title's ``?``*, every token but a ``:`` (spaces aside), and anywhere
  in a title a token that holds ``?`` then a line break (Qwen2.5's ``?\n``): a
  question title ends at its question mark. Masking line breaks alone was not
  enough: Qwen wrote ``What is 5 times 7? Answer:``. With the rule, 35 of 40
  parallelizable prompts and 3 of 36 single ones got blocks of two or more
  branches (was 32/40 and 4/36), 25 plans had one title per task step (was
  22), and the sub-questions are titled ``What is 5 times 7?``.

Nothing else is touched: the model's next choice is taken as it is (``Step 1``
becomes e.g. ``Preheat the oven``), text outside a title is never masked, nor
is a later token of a title but for the question rule (``Top 3 fruit`` is
fine), and caller-given titles are never planned, so ``branches=["1", "2"]``
stays as given. Masking digits and generic words at later tokens was tried and
is worse: after ``Step `` with the digits masked, SmolLM2-135M's next choice is
a line break, which ends the plan.

On by default since the quality suite measured it (`benchmarks/quality`): with
the adapters' planning instructions Qwen2.5-Coder-0.5B planned blocks of two or
more branches on 35 of 40 parallelizable prompts and 4 of 36 prompts with
nothing to split, against 33/40 and 6/36 without it (a word problem's
``70 km per hour`` / ``5 hours`` plan is gone). On SmolLM2-135M (8 planning
prompts, greedy, ``force_plan``) it changed 2 plans, both for the worse: instead
of ``Step 1`` ... ``Step 5`` the model ended its list after one or two titles
(``Break``, ``Continue``); SmolLM2 rarely plans on its own either way.

It is a `pbd_core.TokenConstraint`, so it needs logits in this process
(`LocalExecutor`: transformers or llama.cpp); a server samples on its own and
the option has no effect there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import torch

from .detokenize import TextStream, token_texts
from .plan_format import LINE_BREAK_CLASS, MAX_TITLE_CHARS, STEP_MARKER

GENERIC_WORDS = ("step", "part", "phase", "stage", "section", "chapter", "task", "item", "option", "question",
                 "answer", "result", "solution", "yes", "no")
"""Words a numbered title starts with, and answer labels; a token that is one of them alone may not start a
planned title."""

_LINE_BREAK = re.compile(LINE_BREAK_CLASS)
_QUESTION_BREAK = re.compile(r"\?[ \t]*" + LINE_BREAK_CLASS)
_START = re.compile(r"\s*[(\[]*\s*")  # nothing of the title written yet
_BANNED_TOKEN = re.compile(r"[\s(\[]*(?:\d|#|(?:" + "|".join(GENERIC_WORDS) + r")\s*#?$)", re.IGNORECASE)


class DescriptiveTitles:
    """A per-stream `TokenConstraint` that keeps planned titles from starting with a number (or a generic
    word, an answer label, ``#``) and ends a question title at its ``?``.

    Args:
        tokenizer: the model's.
        context_ids: the stream's context (its last tokens tell whether it starts inside a title,
            as a plan entry after ``####`` does).
    """

    def __init__(self, tokenizer: Any, context_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        tail = list(context_ids[-8:])
        self.before = tokenizer.decode(tail, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self.stream = TextStream(tokenizer, tail)
        self.masked = 0  # how many tokens were sampled under the mask (for tests and diagnostics)

    def _title_head(self) -> str | None:
        """The text of the title being written (after ``####``), or None outside a title."""
        text = (self.before + self.stream.text)[-(MAX_TITLE_CHARS + len(STEP_MARKER)) :]
        marker = text.rfind(STEP_MARKER)
        if marker == -1:
            return None
        head = text[marker + len(STEP_MARKER) :]
        if _START.fullmatch(head) is None and (":" in head or _LINE_BREAK.search(head)):
            return None  # the title is over (or never was one)
        return head

    def banned(self) -> torch.Tensor | None:
        """Token ids forbidden now, or None when the stream is not writing a title."""
        head = self._title_head()
        if head is None:
            return None
        if _START.fullmatch(head) is not None:
            return _banned_tokens(self.tokenizer)
        if head.rstrip(" \t").endswith("?"):
            return _after_question_tokens(self.tokenizer)
        return _question_break_tokens(self.tokenizer)

    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        banned = self.banned()
        if banned is not None:
            logits[..., banned[banned < logits.shape[-1]].to(logits.device)] = float("-inf")
            self.masked += 1
        return logits

    def advance(self, token_id: int) -> None:
        self.stream.push(token_id)

    def is_finished(self) -> bool:
        return False


@functools.lru_cache(maxsize=8)
def _question_break_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of the tokens with a ``?`` then a line break in them (Qwen2.5's ``?\n``), found once per tokenizer."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if _QUESTION_BREAK.search(t)], dtype=torch.long)


@functools.lru_cache(maxsize=8)
def _after_question_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of every token that does not start with ``:`` (spaces and tabs aside): after a title's ``?`` the
    title ends."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if not t.lstrip(" \t").startswith(":")], dtype=torch.long)


@functools.lru_cache(maxsize=8)
def _banned_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of the tokens a planned title may not start with, found once per tokenizer (SmolLM2: 0.3 s)."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if _BANNED_TOKEN.match(t)], dtype=torch.long)
