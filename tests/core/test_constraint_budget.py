"""A constrained answer whose grammar cannot finish within the budget is refused before decoding."""

import pytest
from scripted_model import ScriptedLM, rules

from pbd_core import ParallelBranchDecoder, RawPrompt


class NeedsTen:
    """A constraint that allows anything but needs 10 tokens to reach a valid end."""

    def mask_logits(self, logits, budget=None):
        return logits

    def advance(self, token_id):
        pass

    def is_finished(self):
        return False

    def min_tokens_to_finish(self):
        return 10


def decoder() -> ParallelBranchDecoder:
    model = ScriptedLM(rules(("Q\n", "abc")))
    return ParallelBranchDecoder(model, model.tokenizer)


def test_a_budget_below_the_grammars_minimum_is_a_clear_error_before_any_compute():
    d = decoder()
    with pytest.raises(ValueError, match="max_new_tokens=5 is smaller than the 10 tokens"):
        d.generate(RawPrompt("Q\n"), constraint=NeedsTen, max_new_tokens=5)
    with pytest.raises(ValueError, match="max_branch_tokens=4 is smaller than the 10 tokens"):
        d.generate(RawPrompt("Q\n"), constraint=NeedsTen, branches=["A"], max_branch_tokens=4)
    assert d.model.calls == []


def test_a_budget_at_the_minimum_decodes():
    assert decoder().generate(RawPrompt("Q\n"), constraint=NeedsTen, max_new_tokens=10).text == "abc"
