"""The first step as a worked example (``exemplar_step``, issue 11; off by default).

With the option, a block of three or more steps writes its first step alone; the
others then decode in parallel, each seeing the shared prefix, the first step and
its own title: what the second step of sequential decoding sees. Branches still
never see each other, and each equals plain decoding of its recorded context.
"""

from __future__ import annotations

import pytest
from scripted_model import FRUIT, FRUIT_BODIES, decoder_for
from tiny_models import byte_tokenizer, reference_tokens, tiny_model

from pbd_core import ParallelBranchDecoder, RawPrompt, ReadingOrder

CLOSE = ("####%%%%\n", "Done.")


def decoded_text(decoder, ids) -> str:
    return decoder.tokenizer.decode(ids)


def test_later_steps_see_the_first_and_not_each_other():
    decoder = decoder_for(*FRUIT_BODIES, CLOSE)
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_branch_tokens=30, max_new_tokens=200,
                              exemplar_step=True, output_format="raw")
    apples, bananas, cherries = result.branches
    assert decoded_text(decoder, apples.context_ids) == "Q\n####Apples:"
    assert decoded_text(decoder, bananas.context_ids) == "Q\n####Apples: red.\n####Bananas:"
    assert decoded_text(decoder, cherries.context_ids) == "Q\n####Apples: red.\n####Cherries:"
    assert result.text == "####Apples: red.\n####Bananas: long and yellow.\n####Cherries: small.\n####%%%%\nDone."
    assert result.parallel and result.stats.max_live_branches == 2
    assert {b.block for b in result.branches} == {0}


def test_a_branch_that_saw_a_sibling_would_show_it():
    """With the scripted model's leak guard, a step that can see another fruit's step writes ``L`` on and on
    (the first letter of ``LEAK``): the later steps see the first (by design), the first sees none."""
    decoder = decoder_for(*FRUIT_BODIES, CLOSE, leak_guard=FRUIT)
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_branch_tokens=30, max_new_tokens=200,
                              exemplar_step=True)
    assert result.branches[0].text == " red.\n"
    assert all(b.text.startswith("LLL") for b in result.branches[1:])
    plain = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_branch_tokens=30, max_new_tokens=200)
    assert not any("L" in b.text for b in plain.branches)  # off (the default): no branch sees another


def test_two_steps_stay_parallel():
    decoder = decoder_for(*FRUIT_BODIES, CLOSE)
    on = decoder.generate(RawPrompt("Q\n"), branches=FRUIT[:2], max_branch_tokens=30, max_new_tokens=200,
                          exemplar_step=True)
    off = decoder.generate(RawPrompt("Q\n"), branches=FRUIT[:2], max_branch_tokens=30, max_new_tokens=200)
    assert [b.context_ids for b in on.branches] == [b.context_ids for b in off.branches]
    assert on.stats.max_live_branches == 2


def test_streaming_shows_the_steps_in_order():
    decoder = decoder_for(*FRUIT_BODIES, CLOSE)
    events = list(decoder.stream(RawPrompt("Q\n"), branches=FRUIT, max_branch_tokens=30, max_new_tokens=200,
                                 exemplar_step=True))
    order = ReadingOrder()
    shown = "".join(chunk for event in events for chunk in order.feed(event))
    assert shown == events[-1].result.raw_text


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_each_step_is_exactly_plain_decoding_of_what_it_saw(arch, merge):
    tokenizer = byte_tokenizer()
    model = tiny_model(arch)
    decoder = ParallelBranchDecoder(model, tokenizer)
    stops = [chr(c) for c in range(33, 127, 4)]
    result = decoder.generate("Question: list things", branches=["alpha", "b", "gamma delta", "x"],
                              max_branch_tokens=16, max_new_tokens=300, stop=stops, merge=merge, exemplar_step=True)
    first = result.branches[0]
    for b in result.branches[1:]:
        assert b.context_ids[: len(first.context_ids)] == first.context_ids  # each saw the first step
    for b in result.branches:
        expected = reference_tokens(model, b.context_ids, len(b.token_ids), tokenizer.eos_token_id, tokenizer)
        assert b.token_ids == expected, b.title
