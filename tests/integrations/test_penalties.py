"""Repetition penalty: Hugging Face's rule, per stream, composed with a grammar."""

from __future__ import annotations

import pytest
import torch

from pbd_integrations.penalties import RepetitionPenalty, with_repetition_penalty


class AllowEven:
    """A toy constraint: only even token ids; finished after three tokens."""

    def __init__(self) -> None:
        self.count = 0

    def mask_logits(self, logits):
        logits[1::2] = float("-inf")
        return logits

    def advance(self, token_id):
        self.count += 1

    def is_finished(self):
        return self.count >= 3


def test_seen_tokens_are_penalised_by_sign() -> None:
    penalty = RepetitionPenalty(2.0)
    penalty.advance(0)
    penalty.advance(1)
    penalty.advance(1)
    out = penalty.mask_logits(torch.tensor([4.0, -4.0, 4.0, -4.0]))
    assert out.tolist() == [2.0, -8.0, 4.0, -4.0]  # each seen token once, whatever the count


def test_wraps_the_inner_constraint() -> None:
    penalty = RepetitionPenalty(2.0, AllowEven())
    penalty.advance(2)
    out = penalty.mask_logits(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert out.tolist() == [1.0, float("-inf"), 0.5, float("-inf")]
    penalty.advance(0)
    penalty.advance(2)
    assert penalty.is_finished()


def test_factory_is_unchanged_without_a_penalty() -> None:
    assert with_repetition_penalty(1.0, None) is None
    assert with_repetition_penalty(1.0, AllowEven) is AllowEven
    made = with_repetition_penalty(1.5, AllowEven)()
    assert isinstance(made.inner, AllowEven)
    assert made is not with_repetition_penalty(1.5, AllowEven)()  # one state per stream
    with pytest.raises(ValueError, match="must be > 0"):
        RepetitionPenalty(0)


def test_exempt_tokens_are_never_penalised() -> None:
    penalty = RepetitionPenalty(2.0, exempt=lambda token: token == 1)
    penalty.advance(0)
    penalty.advance(1)
    assert penalty.mask_logits(torch.tensor([4.0, 4.0])).tolist() == [2.0, 4.0]


def test_punctuation_exemption_reads_the_token_text() -> None:
    from pbd_integrations.penalties import punctuation_exemption

    class Tok:
        def decode(self, ids):
            return {0: '":', 1: " cat", 2: "7", 3: "{\""}[ids[0]]

    exempt = punctuation_exemption(Tok())
    assert [exempt(i) for i in range(4)] == [True, False, False, True]
