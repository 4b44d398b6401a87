"""Branches that say something (``nonempty_branches``, issue 11).

With the option (on by default), a branch may not end, nor break its line,
before it has written a non-space character (`pbd_core.branch_start`): a small model that
answers a lone title by closing it at once takes its next choice instead.
The mask covers a branch's first tokens only; the same applies to the steps of
``parallel=False``, so both modes stay comparable.
"""

from __future__ import annotations

import pytest
from scripted_model import ranked, rules, scripted_decoder
from tiny_models import byte_tokenizer

from pbd_core import RawPrompt
from pbd_core.branch_start import NonEmptyBranch


CLOSES_AT_ONCE = rules(("####Tea:", "\n####"), ("####Coffee:", "\n####"), ("####%%%%\n", "Done."))
WRITES_A_STEP = rules(("####Tea:", " Tea is calm.\n####"), ("####Coffee:", " Coffee wakes.\n####"))


@pytest.mark.parametrize("parallel", [True, False])
def test_a_branch_the_model_would_close_at_once_writes_its_step(parallel):
    decoder = scripted_decoder(ranked(CLOSES_AT_ONCE, WRITES_A_STEP))
    result = decoder.generate(RawPrompt("Q\n"), branches=["Tea", "Coffee"], parallel=parallel, nonempty_branches=True)
    assert [(b.title, b.text) for b in result.branches] == [("Tea", " Tea is calm.\n"), ("Coffee", " Coffee wakes.\n")]
    assert result.raw_text.endswith("####%%%%\nDone.")


@pytest.mark.parametrize("parallel", [True, False])
def test_without_the_option_the_branches_stay_empty(parallel):
    decoder = scripted_decoder(ranked(CLOSES_AT_ONCE, WRITES_A_STEP))
    result = decoder.generate(RawPrompt("Q\n"), branches=["Tea", "Coffee"], parallel=parallel, nonempty_branches=False)
    assert [b.text.strip() for b in result.branches] == ["", ""]


def test_the_mask_lifts_after_the_first_written_character():
    tokenizer = byte_tokenizer()
    constraint = NonEmptyBranch(tokenizer)
    newline, hash_, space, letter = (tokenizer("\n# T")["input_ids"][i] for i in (0, 1, 2, 3))

    def allowed(token: int) -> bool:
        import torch

        logits = constraint.mask_logits(torch.zeros(len(tokenizer)))
        return bool(logits[token] > float("-inf"))

    assert not allowed(newline) and not allowed(hash_) and not allowed(tokenizer.eos_token_id)
    assert allowed(space) and allowed(letter)  # a step starts on its title's line
    constraint.advance(space)  # a space is not yet text
    assert not allowed(hash_) and not allowed(newline)
    constraint.advance(letter)
    assert allowed(newline) and allowed(hash_) and allowed(tokenizer.eos_token_id)


def test_a_grammar_constraint_is_left_alone():
    """Under a grammar (tool calls, JSON) the grammar decides; the option adds nothing."""
    from pbd_core import DecodeOptions
    from pbd_core.executors.base import ExecutorStats
    from pbd_core.stages import DecodeRun

    def grammar():
        return None

    tokenizer = byte_tokenizer()
    run = DecodeRun(tokenizer=tokenizer, eos_token_ids=frozenset({tokenizer.eos_token_id}), context_window=512,
                    executor_stats=ExecutorStats(), prompt_ids=[1],
                    options=DecodeOptions(nonempty_branches=True, constraint=grammar), token_constraints=True)
    assert run.branch_constraint is grammar
