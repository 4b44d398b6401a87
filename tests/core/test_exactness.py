"""The correctness invariant: a branch is exactly what plain decoding of its context gives.

With greedy decoding in fp32, the tokens of every branch must equal
``model.generate`` on that branch's ``context_ids`` alone. This holds by
construction if the tree mask and position ids are right; any difference is a bug.
"""

import pytest
import torch
from tiny_models import byte_tokenizer, reference_tokens, tiny_model

from pbd_core import ParallelBranchDecoder

TITLES = ["alpha", "b", "gamma delta", "x", "longer title here", "six", "seven", "eight"]
# Random weights rarely emit EOS: stop strings on common bytes end branches at different lengths.
STOPS = [chr(c) for c in range(33, 127, 4)]




@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_tiny_model_branches_equal_independent_greedy_decoding(arch, k, merge, tokenizer):
    model = tiny_model(arch)
    decoder = ParallelBranchDecoder(model, tokenizer)
    result = decoder.generate(
        "Question: list things", branches=TITLES[:k], max_branch_tokens=24, max_new_tokens=400, stop=STOPS, merge=merge
    )
    assert len(result.branches) == k
    if k > 1:
        assert len({len(b.token_ids) for b in result.branches}) > 1, "branches should have unequal lengths"
    for branch in result.branches:
        expected = reference_tokens(model, branch.context_ids, len(branch.token_ids), tokenizer.eos_token_id, tokenizer)
        assert branch.token_ids == expected, branch.title
    # Parallel stage: one forward pass per token of the longest branch, not k times that.
    assert result.stats.stage_forward_passes["parallel"] == max(len(b.token_ids) for b in result.branches)


def test_gemma3_window_is_shorter_than_the_branches_context(tokenizer):
    """The exactness above is meaningful for sliding layers only if the window really cuts the context."""
    model = tiny_model("gemma3")
    decoder = ParallelBranchDecoder(model, tokenizer)
    assert decoder.layer_windows == {"full_attention": None, "sliding_attention": 8}
    result = decoder.generate("Question: list things", branches=["a", "b"], max_branch_tokens=24, max_new_tokens=100)
    assert all(len(b.context_ids) > 8 for b in result.branches)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 8])
def test_default_model_branches_equal_independent_greedy_decoding(default_decoder_fp32, k):
    decoder = default_decoder_fp32
    titles = ["Mars", "Venus", "Jupiter", "Saturn", "Mercury", "Neptune", "Uranus", "Earth"][:k]
    # 40 tokens: long enough that some branches end on their own (under the default nonempty_branches mask
    # no branch ends at its first token, and with 24 all three of k = 3 ran to the budget).
    result = decoder.generate(
        "Give one short fact about each planet.", branches=titles, max_branch_tokens=40, max_new_tokens=40 * k + 8
    )
    if k > 1:
        assert len({len(b.token_ids) for b in result.branches}) > 1
    for branch in result.branches:
        expected = reference_tokens(decoder.model, branch.context_ids, len(branch.token_ids), min(decoder.eos_token_ids), decoder.tokenizer)
        assert branch.token_ids == expected, branch.title
