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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self._seen:
            index = torch.tensor(sorted(set(self._seen)), device=logits.device)
            index = index[index < logits.shape[-1]]
            picked = logits[..., index]
            logits[..., index] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        return self.inner.mask_logits(logits) if self.inner is not None else logits

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
    return lambda: RepetitionPenalty(penalty, factory() if factory is not None else None, exempt=exempt)


def punctuation_exemption(tokenizer: Any) -> Callable[[int], bool]:
    """``exempt`` for `RepetitionPenalty`: true for tokens whose text has no letter or digit."""

    @functools.lru_cache(maxsize=None)
    def exempt(token_id: int) -> bool:
        return not any(ch.isalnum() for ch in tokenizer.decode([token_id]))

    return exempt
