"""The decode loop, specified on a scripted model whose output depends on what it can see."""

from functools import partial

import pytest
from scripted_model import FRUIT, FRUIT_BODIES, PLAN
from scripted_model import decoder_for as scripted_decoder_for

from pbd_core import (
    BranchEndEvent,
    BranchStartEvent,
    FinalEvent,
    RawPrompt,
    ReadingOrder,
    TokenEvent,
)

EXPECTED = "Intro.\n####Apples: red.\n####Bananas: long and yellow.\n####Cherries: small.\n####%%%%\nDone."

decoder_for = partial(scripted_decoder_for, leak_guard=FRUIT)
"""Here every answer guards the fruit branches against seeing each other unless a test passes ``leak_guard``."""


def reading_order_text(events) -> str:
    order = ReadingOrder()
    return "".join(chunk for event in events for chunk in order.feed(event))


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_model_planned_branches_are_decoded_in_parallel_and_merged(merge):
    decoder = decoder_for(*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."))
    events = list(decoder.stream(RawPrompt("Q\n"), merge=merge))
    result = events[-1].result
    assert result.raw_text == EXPECTED
    assert result.parallel and result.finish_reason == "eos"
    assert [(b.title, b.text, b.finish_reason) for b in result.branches] == [
        ("Apples", " red.\n", "end_marker"),
        ("Bananas", " long and yellow.\n", "end_marker"),
        ("Cherries", " small.\n", "end_marker"),
    ]
    assert result.stats.max_live_branches == 3
    # One pass per token of the longest branch (its end marker included).
    assert result.stats.stage_forward_passes["parallel"] == max(len(b.token_ids) for b in result.branches)
    assert reading_order_text(events) == result.raw_text


def test_branch_events_carry_every_branch_token_with_its_index():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", "\nDone."))
    events = list(decoder.stream(RawPrompt("Q\n"), branches=FRUIT))
    starts = [e for e in events if isinstance(e, BranchStartEvent)]
    ends = [e for e in events if isinstance(e, BranchEndEvent)]
    assert [e.title for e in starts] == FRUIT and [e.index for e in ends] == [0, 2, 1]  # shortest ends first
    for index, branch in enumerate(events[-1].result.branches):
        text = "".join(e.text for e in events if isinstance(e, TokenEvent) and e.branch == index)
        assert text == f"####{branch.title}:{branch.text}"


def test_kv_cache_holds_one_prefix_plus_titles_plus_branch_tokens():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", ""))
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge="reuse")
    titles = sum(len(f"####{t}:") for t in FRUIT)  # one byte per token
    branch_tokens = sum(len(b.token_ids) - 1 for b in result.branches)  # the ending token is never written
    close = len("####%%%%\n")
    assert result.stats.kv_tokens == result.stats.prompt_tokens + titles + branch_tokens + close


def test_recompute_merge_reencodes_the_branches_as_sequential_text():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", ""))
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge="recompute")
    assert result.stats.kv_tokens == result.stats.prompt_tokens + len(result.raw_text)
    # At its longest the cache held the prefix, every title and every branch token written (before the merge).
    titles = sum(len(f"####{t}:") for t in FRUIT)
    assert result.stats.peak_kv_tokens >= result.stats.prompt_tokens + titles + sum(len(b.token_ids) - 1 for b in result.branches)


def test_caller_branches_sequentially_each_step_sees_the_ones_before():
    decoder = decoder_for(
        ("####Apples:", " red.\n####"),
        ("red.\n####Bananas:", " after apples.\n####"),
        ("apples.\n####Cherries:", " last.\n####"),
        ("####%%%%", "\nDone."),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, parallel=False)
    assert result.raw_text == "####Apples: red.\n####Bananas: after apples.\n####Cherries: last.\n####%%%%\nDone."
    assert [b.text for b in result.branches] == [" red.\n", " after apples.\n", " last.\n"]
    assert not result.parallel and result.stats.max_live_branches == 0
    assert result.branches[1].context_ids[-len("####Bananas:") :] == decoder.tokenizer("####Bananas:")["input_ids"]


def test_plain_decoding_fills_branches_from_the_steps_it_wrote():
    decoder = decoder_for(("Q\n", "####A: one\n####B: two\n####%%%%\nEnd"), leak_guard=())
    result = decoder.generate(RawPrompt("Q\n"), parallel=False)
    assert result.raw_text == "####A: one\n####B: two\n####%%%%\nEnd"
    assert [(b.title, b.text) for b in result.branches] == [("A", " one\n"), ("B", " two\n")]
    # The prefill, then one pass per text token; the final EOS is sampled but never fed.
    assert result.stats.forward_passes == 1 + len(result.raw_text)
    assert result.stats.generated_tokens == len(result.raw_text) + 1


def test_two_parallel_blocks_in_one_answer():
    decoder = decoder_for(
        ("Q\n", "####A:"),
        ("A: ...\n####", "B:"),
        ("B: ...\n####", "%%%%"),
        ("####A:", " a.\n####"),
        ("####B:", " b.\n####"),
        ("####%%%%", "\nThen:\n####C:"),
        ("C: ...\n####", "D:"),
        ("D: ...\n####", "%%%%"),
        ("####C:", " c.\n####"),
        ("####D:", " d.\n####"),
        ("Then:\n####C: c.\n####D: d.\n####%%%%", "\nEnd."),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"), merge="recompute")
    assert result.raw_text == "####A: a.\n####B: b.\n####%%%%\nThen:\n####C: c.\n####D: d.\n####%%%%\nEnd."
    assert [(b.title, b.block) for b in result.branches] == [("A", 0), ("B", 0), ("C", 1), ("D", 1)]


@pytest.mark.parametrize(
    "written",
    [
        "####no colon on this line\nso just text.",  # newline before the colon
        "####: empty title.",  # nothing before the colon
        "####%%%% closed before any step.",
        "Costs #### money.",  # the marker mid-sentence, then text
    ],
)
def test_malformed_plans_degrade_to_sequential_decoding_without_losing_text(written):
    decoder = decoder_for(("Q\n", written), leak_guard=())
    result = decoder.generate(RawPrompt("Q\n"))
    assert result.raw_text == written
    assert result.branches == [] and not result.parallel


def test_a_list_cut_short_plans_with_the_titles_read_so_far():
    decoder = decoder_for(
        ("Q\n", "####A:"),
        ("A: ...\n####", "B:"),
        ("B: ...\n####", "broken\ntitle"),
        ("####A:", " a.\n####"),
        ("####B:", " b.\n####"),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"))
    assert [b.title for b in result.branches] == ["A", "B"]


def test_max_branches_caps_a_model_plan():
    decoder = decoder_for(*PLAN, *FRUIT_BODIES)
    result = decoder.generate(RawPrompt("Q\n"), max_branches=2)
    assert [b.title for b in result.branches] == ["Apples", "Bananas"]


def test_stop_string_spanning_tokens_ends_the_answer_and_is_not_in_the_text():
    decoder = decoder_for(("Q\n", "Answer: 42 STOP and more"), leak_guard=())
    events = list(decoder.stream(RawPrompt("Q\n"), stop=["STOP"]))
    result = events[-1].result
    assert result.raw_text == "Answer: 42 " and result.finish_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Answer: 42 "


def test_stop_string_in_a_branch_ends_only_that_branch():
    decoder = decoder_for(
        ("####Apples:", " red. END more\n####"),
        ("####Bananas:", " yellow.\n####"),
        ("####%%%%", "\nDone."),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"), branches=["Apples", "Bananas"], stop=["END"])
    assert [(b.text, b.finish_reason) for b in result.branches] == [(" red. ", "stop"), (" yellow.\n", "end_marker")]
    assert result.raw_text.endswith("####%%%%\nDone.")


def test_branch_budget_ends_a_branch_with_length_and_the_merge_still_sees_it():
    decoder = decoder_for(("####Apples:", " a very long body\n####"), ("####%%%%", "\nDone."), leak_guard=())
    result = decoder.generate(RawPrompt("Q\n"), branches=["Apples"], max_branch_tokens=5)
    assert result.branches[0].finish_reason == "length" and result.branches[0].text == " a ve"
    assert result.raw_text == "####Apples: a ve\n####%%%%\nDone."


def test_total_budget_is_never_exceeded():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", "\nDone, and a long conclusion."))
    for budget in (1, 5, 17, 40):
        result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_new_tokens=budget)
        assert result.stats.generated_tokens <= budget
        assert result.finish_reason == "length"


def test_sampling_with_a_seed_is_reproducible():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", "\nDone."))
    first = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, temperature=0.8, seed=3)
    second = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, temperature=0.8, seed=3)
    assert first.text == second.text


def test_finished_branches_leave_the_batch_at_once():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", ""))
    model = decoder.model
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT)
    lengths = [len(b.token_ids) for b in result.branches]  # tokens sampled per branch, ending token included
    assert lengths == [10, 22, 12]
    # calls[0] is the prompt, calls[1] the title prefill; then step i feeds token i of every live branch.
    steps = model.calls[2 : 2 + max(lengths) - 1]
    assert steps == [sum(n > i for n in lengths) for i in range(1, max(lengths))]
    assert steps[:9] == [3] * 9 and steps[-1] == 1


def test_force_plan_writes_the_first_marker_so_the_model_only_lists_titles():
    decoder = decoder_for(
        ("Q\n####", "Apples:"),  # the model would not start a plan itself: no rule after "Q\n"
        ("Apples: ...\n####", "Bananas:"),
        ("Bananas: ...\n####", "%%%%"),
        *FRUIT_BODIES[:2],
        ("####%%%%", "\nDone."),
    )
    assert decoder.generate(RawPrompt("Q\n")).text == ""
    result = decoder.generate(RawPrompt("Q\n"), force_plan=True)
    assert result.raw_text == "####Apples: red.\n####Bananas: long and yellow.\n####%%%%\nDone."
    assert result.parallel


def test_force_plan_with_plain_decoding_starts_the_answer_with_the_same_marker():
    decoder = decoder_for(("Q\n####", "A: one\n####%%%%\nEnd"), leak_guard=())
    result = decoder.generate(RawPrompt("Q\n"), force_plan=True, parallel=False)
    assert result.raw_text == "####A: one\n####%%%%\nEnd"
    assert [(b.title, b.text) for b in result.branches] == [("A", " one\n")]


@pytest.mark.parametrize("parallel", [True, False])
def test_after_caller_given_steps_a_new_step_in_the_conclusion_ends_the_answer(parallel):
    decoder = decoder_for(
        ("####Apples:", " red.\n####"),
        ("####Bananas:", " yellow.\n####"),
        ("####%%%%", "\nBoth are fruit.\n####Cherries: more steps nobody asked for"),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"), branches=["Apples", "Bananas"], parallel=parallel)
    assert result.raw_text.endswith("####%%%%\nBoth are fruit.\n")
    assert result.finish_reason == "stop"


def test_recompute_is_the_default_merge():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", ""))
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT)
    assert result.stats.kv_tokens == result.stats.prompt_tokens + len(result.raw_text)  # one sequential text


def test_a_repeated_title_ends_the_plan():
    decoder = decoder_for(
        ("Q\n", "####A:"),
        ("A: ...\n####", "B:"),
        ("B: ...\n####", "A:"),  # the model starts listing again
        ("####A:", " a.\n####"),
        ("####B:", " b.\n####"),
        leak_guard=(),
    )
    result = decoder.generate(RawPrompt("Q\n"))
    assert [b.title for b in result.branches] == ["A", "B"]


def test_the_engine_closes_a_block_on_its_own_line():
    decoder = decoder_for(*FRUIT_BODIES[:1], ("####%%%%\n", "Done."), leak_guard=())
    result = decoder.generate(RawPrompt("Q\n"), branches=["Apples"])
    assert result.raw_text == "####Apples: red.\n####%%%%\nDone."
