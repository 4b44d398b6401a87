"""On a CUDA device: the same exactness invariant, with masks and metadata built on the GPU."""

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from pbd_core import ParallelBranchDecoder

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_branches_equal_independent_greedy_decoding_on_cuda(arch):
    tokenizer = byte_tokenizer()
    model = tiny_model(arch).to("cuda")
    decoder = ParallelBranchDecoder(model, tokenizer)
    assert decoder.device.type == "cuda"
    result = decoder.generate("Question: list things", branches=["a", "bb", "ccc"], max_branch_tokens=16)
    for branch in result.branches:
        out = model.generate(
            torch.tensor([branch.context_ids], device="cuda"),
            max_new_tokens=len(branch.token_ids),
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        assert out[0, len(branch.context_ids) :].tolist() == branch.token_ids


def test_seeded_sampling_is_reproducible_on_cuda():
    decoder = ParallelBranchDecoder(tiny_model("llama").to("cuda"), byte_tokenizer())
    first = decoder.generate("Q", branches=["a", "b"], temperature=1.0, seed=1, max_branch_tokens=8)
    second = decoder.generate("Q", branches=["a", "b"], temperature=1.0, seed=1, max_branch_tokens=8)
    assert first.text == second.text
