"""Repetition penalty as a `pbd_core.TokenConstraint`, optionally wrapping another constraint.

Small models loop ("the cat was a cat, and it was a cat, ...") and, inside a
grammar-constrained JSON string, a loop runs until the token budget is gone
and the JSON is left unfinished. The penalty is Hugging Face's
``repetition_penalty`` (CTRL, Keskar et al. 2019): the logit of every token
this stream already produced is divided by the penalty when positive and
multiplied by it when negative. It only sees its own stream, so each branch
is penalised for its own repeats, not its siblings'.

Tokens without a letter or digit (JSON punctuation such as ``"``, ``{"`` or
``":``) can be exempted: a JSON answer must repeat them, and penalising the
closing quote makes strings longer, the opposite of the aim.

`DryPenalty` is the narrower tool the JSON grammar applies by default inside
its string values (`pbd_integrations.grammar`): it penalises only a token that
would continue a sequence already written, more the longer the repeat, so a
phrase loop (``"I'm a cat, I'm a cat, ..."``) is broken within a few tokens
while ordinary text, whose tokens recur but not in the same long order, is
left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class RepetitionPenalty:
    """Penalise tokens this stream has produced, then apply ``inner`` (a grammar), if any."""

    def __init__(self, penalty: float, inner: Any | None = None, *, exempt: Callable[[int], bool] | None = None) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty!r}")
        self.penalty = penalty
        self.inner = inner
        self.exempt = exempt
        self._seen: list[int] = []

    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        if self._seen:
            index = torch.tensor(sorted(set(self._seen)), device=logits.device)
            index = index[index < logits.shape[-1]]
            picked = logits[..., index]
            logits[..., index] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        if self.inner is None:
            return logits
        # The budget goes to the grammar (which may finish its value with it); a constraint
        # written before the budget existed gets the one-argument call.
        return self.inner.mask_logits(logits) if budget is None else self.inner.mask_logits(logits, budget)

    def min_tokens_to_finish(self) -> int:
        method = getattr(self.inner, "min_tokens_to_finish", None)
        return int(method()) if callable(method) else 0

    @property
    def cut_by_budget(self) -> bool:
        return bool(getattr(self.inner, "cut_by_budget", False))

    def advance(self, token_id: int) -> None:
        if self.exempt is None or not self.exempt(int(token_id)):
            self._seen.append(int(token_id))
        if self.inner is not None:
            self.inner.advance(token_id)

    def is_finished(self) -> bool:
        return self.inner.is_finished() if self.inner is not None else False


def with_repetition_penalty(
    penalty: float, factory: Callable[[], Any] | None = None, *, exempt: Callable[[int], bool] | None = None
) -> Callable[[], Any] | None:
    """A constraint factory adding the penalty to ``factory``'s constraints (``factory`` unchanged at 1.0)."""
    if penalty == 1.0:
        return factory

    def make() -> RepetitionPenalty:
        return RepetitionPenalty(penalty, factory() if factory is not None else None, exempt=exempt)

    make.grammar = getattr(factory, "grammar", None)  # a server enforces the grammar (without the penalty)
    make.repetition_penalty = penalty
    return make


def punctuation_exemption(tokenizer: Any) -> Callable[[int], bool]:
    """``exempt`` for `RepetitionPenalty`: true for tokens whose text has no letter or digit."""

    @functools.lru_cache(maxsize=None)
    def exempt(token_id: int) -> bool:
        return not any(ch.isalnum() for ch in tokenizer.decode([token_id]))

    return exempt


@dataclass(frozen=True)
class DryPenalty:
    """DRY, "Don't Repeat Yourself" (p-e-w, text-generation-webui #5677, 2024), over one token sequence.

    For every token that would extend a repeat, that is, a token that followed an
    earlier occurrence of the sequence's current suffix, the logit is lowered by
    ``multiplier * base ** (length - allowed_length)``, where ``length`` is the
    longest such suffix (in tokens), if ``length >= allowed_length``. A repeat of
    two tokens costs 0.8, of six 7.5, of eight 23: a loop ends within a few
    tokens of its second round. The defaults are the original's.
    """

    multiplier: float = 0.8
    base: float = 1.75
    allowed_length: int = 2
    max_length: int = 32
    """Longer repeats are counted as this long (the penalty is already decisive)."""

    def __post_init__(self) -> None:
        if self.multiplier < 0 or self.base < 1 or self.allowed_length < 1:
            raise ValueError(f"bad DryPenalty settings: {self}")

    def penalties(self, context: Sequence[int]) -> dict[int, float]:
        """``{token: amount}`` to subtract from the next token's logits after ``context``."""
        return {
            token: self.multiplier * self.base ** (length - self.allowed_length)
            for token, length in repeat_lengths(context, self.max_length).items()
            if length >= self.allowed_length
        }

    def apply(self, context: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """Lower ``logits`` ([vocab], in place) for the tokens that would extend a repeat of ``context``."""
        if self.multiplier == 0 or len(context) < self.allowed_length:
            return logits
        amounts = self.penalties(context)
        if amounts:
            index = torch.tensor(list(amounts), device=logits.device)
            keep = index < logits.shape[-1]
            values = torch.tensor(list(amounts.values()), dtype=logits.dtype, device=logits.device)
            logits[index[keep]] -= values[keep]
        return logits


def repeat_lengths(context: Sequence[int], max_length: int = 32) -> dict[int, int]:
    """For each token that followed an earlier occurrence of a suffix of ``context``: the longest such suffix.

    >>> repeat_lengths([1, 2, 3, 1, 2])  # "1 2" was followed by 3
    {3: 2}
    """
    n = len(context)
    lengths: dict[int, int] = {}
    if n < 2:
        return lengths
    last = context[-1]
    for j in range(n - 2, -1, -1):
        if context[j] != last:
            continue
        length = 1
        while length < max_length and j - length >= 0 and context[j - length] == context[n - 1 - length]:
            length += 1
        follower = context[j + 1]
        if length > lengths.get(follower, 0):
            lengths[follower] = length
    return lengths
