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
  ``Answer`` are now titled with their question, though Qwen then often ends the
  title with a line break instead of ``:``, so they stay plain text.

Nothing else is touched: the model's next choice is taken as it is (``Step 1``
becomes e.g. ``Preheat the oven``), text outside a title and every later token
of a title are never masked (``Top 3 fruit`` is fine), and caller-given titles
are never planned, so ``branches=["1", "2"]`` stays as given. Masking later
tokens was tried and is worse: after ``Step `` with the digits masked,
SmolLM2-135M's next choice is a line break, which ends the plan.

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
from .plan_format import MAX_TITLE_CHARS, STEP_MARKER

GENERIC_WORDS = ("step", "part", "phase", "stage", "section", "chapter", "task", "item", "option", "question",
                 "answer", "result", "solution", "yes", "no")
"""Words a numbered title starts with, and answer labels; a token that is one of them alone may not start a
planned title."""

_START = re.compile(r"\s*[(\[]*\s*")  # nothing of the title written yet
_BANNED_TOKEN = re.compile(r"[\s(\[]*(?:\d|#|(?:" + "|".join(GENERIC_WORDS) + r")\s*#?$)", re.IGNORECASE)


class DescriptiveTitles:
    """A per-stream `TokenConstraint` that keeps planned titles from starting with a number.

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

    def at_title_start(self) -> bool:
        """True when the stream's next token is the first of a title (after ``####``)."""
        text = (self.before + self.stream.text)[-(MAX_TITLE_CHARS + len(STEP_MARKER)) :]
        marker = text.rfind(STEP_MARKER)
        return marker != -1 and _START.fullmatch(text[marker + len(STEP_MARKER) :]) is not None

    def banned(self) -> torch.Tensor | None:
        """Token ids forbidden now, or None when the stream is not at the start of a title."""
        return _banned_tokens(self.tokenizer) if self.at_title_start() else None

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
def _banned_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of the tokens a planned title may not start with, found once per tokenizer (SmolLM2: 0.3 s)."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if _BANNED_TOKEN.match(t)], dtype=torch.long)
