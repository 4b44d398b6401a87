"""A branch that repeats itself ends there (``repetition_guard``, issue 11).

The rule (`pbd_core.repetition`): the newest tokens repeat a whole earlier
stretch of the stream (period 1-128 tokens) for 32 tokens, or a unit holding a
line break and at least 10 letters or digits (a line, or a block of lines) is
written twice in a row. The repeats are cut from the branch text (one copy
stays) and the branch says ``finish_reason="repetition"``. Lists of similar
lines never fire.
"""

from __future__ import annotations

import random

import pytest
import torch
from scripted_model import ScriptedLM, rules
from tiny_models import byte_tokenizer, tiny_model

from pbd_core import BranchEndEvent, DecodeOptions, FinalEvent, ParallelBranchDecoder, RawPrompt, ReadingOrder
from pbd_core.detokenize import TextStream
from pbd_core.repetition import DEFAULT_MIN_TOKENS, RepetitionGuard, guard_tokens

LOOP_LINE = "- Farah: 45 years old\n"
LEGIT = [
    "1. apples\n2. pears\n3. plums\n4. figs\n5. kiwis\n6. limes\n7. dates\n8. grapes\n",
    "- Farah: 45 years old\n- Omar: 45 years old\n- Lina: 45 years old\n- Sami: 45 years old\n",
    "Is apple sweet?\nAnswer: yes\nIs lemon sweet?\nAnswer: no\nIs pear sweet?\nAnswer: yes\n"
    "Is fig sweet?\nAnswer: yes\n",
    "| a | b | c | d | e |\n| --- | --- | --- | --- | --- |\n| 1 | 2 | 3 | 4 | 5 |\n",
    "x = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\ny = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
    "def f(x):\n    return x\n\ndef g(x):\n    return x\n",
    "Yes\nYes\nNo\n",  # a short line twice: too little to call it a loop
    "Row, row, row your boat,\ngently down the stream.\n",
    "1. Preheat the oven\n2. Mix the flour and water\n3. Knead the dough\n4. Bake the bread\n",
    "Test 1: passed fine\nTest 2: passed fine\nTest 3: passed fine\nTest 4: passed fine\n",
    "- Pasta with cheese\n- Pasta with cheese and crackers\n- Pasta with cheese and ham\n",
    "1. OK\n2. OK\n3. OK\n4. OK\n",  # the same short item: too little to call it a loop
]


def reading_order_text(events) -> str:
    order = ReadingOrder()
    return "".join(chunk for event in events for chunk in order.feed(event))


def raw_text(result) -> str:
    """The branch-format text (``raw_text`` where the result has it)."""
    return getattr(result, "raw_text", None) or result.text


def first_cut(text: str, min_tokens: int = DEFAULT_MIN_TOKENS, labels: bool = False) -> tuple[int, str] | None:
    """Feed ``text`` one byte-token at a time; (tokens fed, text kept) when the guard fires."""
    tokenizer = byte_tokenizer()
    stream, guard = TextStream(tokenizer), RepetitionGuard(min_tokens, labels=labels)
    for token in tokenizer(text)["input_ids"]:
        stream.push(token)
        guard.update(stream.token_ids)
        cut = guard.cut(stream.text, stream.ends)
        if cut is not None:
            return len(stream.token_ids), stream.text[:cut]
    return None


# --------------------------------------------------------------------------- the rule


def test_a_line_written_twice_in_a_row_ends_at_its_second_copy():
    fed, kept = first_cut("The ages:\n" + LOOP_LINE * 5)
    assert kept == "The ages:\n" + LOOP_LINE  # one copy stays
    assert fed == len("The ages:\n" + LOOP_LINE * 2) - 1  # fired on the last character of the second copy


def test_a_block_of_lines_repeated_ends_too():
    block = "- Farah: 45\n- Omar: 30\n"
    fed, kept = first_cut("Ages:\n" + block * 4)
    assert kept == "Ages:\n" + block


def test_a_numbered_line_that_repeats_the_one_before_ends_at_its_second_copy():
    """The numbers keep the tokens from repeating; the lines, list markers aside, are the same."""
    loop = "".join(f"{i}. **Lemon-Cherry**\n" for i in range(3, 12))
    fed, kept = first_cut("Dinner:\n1. **Pizza**\n2. **Lamb**\n" + loop)
    assert kept == "Dinner:\n1. **Pizza**\n2. **Lamb**\n3. **Lemon-Cherry**\n"
    assert fed == len(kept + "4. **Lemon-Cherry**\n")  # at the end of the second copy
    fed, kept = first_cut("Items:\n- Bread and Cheese\n\n* Bread and Cheese\n")  # markers and blank lines aside
    assert kept == "Items:\n- Bread and Cheese\n\n"


@pytest.mark.parametrize("text", LEGIT)
def test_lists_of_similar_lines_never_fire(text):
    assert first_cut(text) is None


def test_a_loop_inside_a_line_ends_after_min_tokens_repeated_tokens():
    fed, kept = first_cut("Me: " + "I'm a cat, " * 12)
    assert kept == "Me: I'm a cat,"  # the space after "Me:" already starts the repeated stretch
    assert fed == len(kept) + DEFAULT_MIN_TOKENS
    fed, kept = first_cut("Me: " + "I'm a cat, " * 12, min_tokens=11)
    assert kept == "Me: I'm a cat," and fed == len(kept) + 11


def test_one_token_repeated():
    fed, kept = first_cut("Wow" + "!" * 40)
    assert kept == "Wow!" and fed == 4 + DEFAULT_MIN_TOKENS


def test_repeats_longer_than_the_longest_period_are_not_looked_for():
    rng = random.Random(0)
    sentence = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(140)) + "."
    assert first_cut(sentence * 2) is None


def test_held_back_text_starts_where_a_repeat_could_be_cut():
    tokenizer = byte_tokenizer()
    stream, guard = TextStream(tokenizer), RepetitionGuard()
    for token in tokenizer("abcXYZabcXY")["input_ids"]:
        stream.push(token)
        guard.update(stream.token_ids)
    assert guard.held_from(stream.text, stream.ends) == len("abcXYZ")  # "abcXY" repeats so far
    stream.push(tokenizer("Q")["input_ids"][0])
    guard.update(stream.token_ids)
    assert guard.held_from(stream.text, stream.ends) is None  # the repeat broke: nothing to hold


@pytest.mark.parametrize("setting, tokens", [(True, 32), (False, 0), (0, 0), (12, 12)])
def test_option_values(setting, tokens):
    assert guard_tokens(setting) == tokens
    assert DecodeOptions(repetition_guard=setting).repetition_guard == setting


@pytest.mark.parametrize("bad", [-1, "yes", 1.5, None])
def test_bad_option_values_are_refused(bad):
    with pytest.raises(ValueError, match="repetition_guard"):
        DecodeOptions(repetition_guard=bad)
    with pytest.raises(ValueError, match="trunk_repetition_guard"):
        DecodeOptions(trunk_repetition_guard=bad)


# --------------------------------------------------------------------------- repeated labels (steps only)

STEP_LEGIT = [
    " Price: 10\nShipping: 5\nTotal: 15\n",
    "- Farah: 45 years old\n- Omar: 45 years old\n- Lina: 45 years old\n",
    " Pros: light and cheap.\nCons: slow.\nAnswer: buy it\n",
    " Test 1: passed\nTest 2: passed\nTest 3: passed\n",  # a number is not a label
    " See http://a.example and http://b.example\nhttp://c.example\n",  # a URL's colon is not a label's
    " Answer: yes\nThe answer: is it yes? Yes.\n",  # "answer" and "the answer" are two labels
]


def test_a_step_that_begins_a_second_answer_line_ends_before_it():
    fed, kept = first_cut(" Answer: 110.82\nAnswer: 124.91\nAnswer: 335.81\n", labels=True)
    assert kept == " Answer: 110.82\n"
    assert fed == len(" Answer: 110.82\nAnswer: ")  # it fires as soon as the label is known to repeat


@pytest.mark.parametrize("text", [
    " **Answer:** 12\nSo the total is 12.\n**Answer:** 14\n",  # markdown, other lines between
    " - Total cost: 12\n- total  cost: 14\n",  # list markers, case and spacing aside
    " Answer:\n12\nAnswer:\n",  # a label alone on its line
])
def test_labels_are_compared_without_markup(text):
    fed, kept = first_cut(text, labels=True)
    assert kept == text[: text.rindex("\n", 0, len(text) - 1) + 1]  # everything before the repeated label's line


@pytest.mark.parametrize("text", STEP_LEGIT)
def test_lines_with_different_labels_never_fire(text):
    assert first_cut(text, labels=True) is None


def test_the_shared_text_may_say_answer_twice():
    """Without ``labels`` (the trunk), the Q/A list of LEGIT stays whole."""
    assert first_cut(LEGIT[2]) is None
    assert first_cut(LEGIT[2], labels=True) is not None  # in a step it would end at the second answer


@pytest.mark.parametrize("parallel", [True, False])
def test_a_branch_that_goes_on_answering_the_other_steps_ends_with_repetition(parallel):
    decoder = decoder_for(
        ("####ACME:", " Answer: 110.82\nAnswer: 124.91\nAnswer: 335.81\n####"),
        ("####KITE:", " Answer: 124.91\n####"),
        ("####%%%%\n", "Done."),
    )
    events = list(decoder.stream(RawPrompt("Q\n"), branches=["ACME", "KITE"], max_branch_tokens=60,
                                 max_new_tokens=200, parallel=parallel))
    result = events[-1].result
    acme, kite = result.branches
    assert (acme.finish_reason, acme.text) == ("repetition", " Answer: 110.82\n")
    assert (kite.finish_reason, kite.text) == ("end_marker", " Answer: 124.91\n")
    assert reading_order_text(events) == raw_text(result)  # the cut line was never shown
    assert "124.91\n####KITE" not in raw_text(result)


def test_the_label_rule_can_be_turned_off_alone():
    decoder = decoder_for(("####ACME:", " Answer: 1\nAnswer: 2\n####"), ("####%%%%\n", "Done."))
    result = decoder.generate(RawPrompt("Q\n"), branches=["ACME"], max_branch_tokens=60, max_new_tokens=200,
                              repeated_label_guard=False)
    assert (result.branches[0].finish_reason, result.branches[0].text) == ("end_marker", " Answer: 1\nAnswer: 2\n")
    with pytest.raises(ValueError, match="repeated_label_guard"):
        DecodeOptions(repeated_label_guard="yes")


# --------------------------------------------------------------------------- in the engine

LOOPING = [
    ("####Ages:", " The ages:\n" + LOOP_LINE * 30),  # the model would go on until its budget
    ("####Fruit:", " 1. apples\n2. pears\n3. plums\n####"),
    ("####%%%%\n", "Done."),
]


def decoder_for(*pairs) -> ParallelBranchDecoder:
    model = ScriptedLM(rules(*pairs))
    return ParallelBranchDecoder(model, model.tokenizer)


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
@pytest.mark.parametrize("parallel", [True, False])
def test_a_looping_branch_ends_with_repetition_and_the_repeats_are_cut(merge, parallel):
    decoder = decoder_for(*LOOPING)
    events = list(decoder.stream(RawPrompt("Q\n"), branches=["Ages", "Fruit"], max_branch_tokens=300,
                                 max_new_tokens=800, merge=merge, parallel=parallel,
                                 repeated_label_guard=False))  # the line rule alone (labels: see above)
    result = events[-1].result
    ages, fruit = result.branches
    assert (ages.finish_reason, ages.text) == ("repetition", " The ages:\n- Farah: 45 years old\n")
    assert (fruit.finish_reason, fruit.text) == ("end_marker", " 1. apples\n2. pears\n3. plums\n")
    assert len(ages.token_ids) == len(" The ages:\n" + LOOP_LINE * 2) - 1  # it stopped at the second copy
    text = raw_text(result)
    assert text == (
        "####Ages: The ages:\n- Farah: 45 years old\n####Fruit: 1. apples\n2. pears\n3. plums\n####%%%%\nDone."
    )
    # Streaming never showed a repeat that was then cut.
    assert reading_order_text(events) == text
    ends = [e for e in events if isinstance(e, BranchEndEvent)]
    assert {e.index: e.finish_reason for e in ends} == {0: "repetition", 1: "end_marker"}
    assert result.finish_reason == "eos"
    # With the label rule (the default) the same loop ends within the second copy, at "- Farah: ".
    labelled = decoder.generate(RawPrompt("Q\n"), branches=["Ages", "Fruit"], max_branch_tokens=300,
                                max_new_tokens=800, merge=merge, parallel=parallel)
    assert labelled.branches[0].text == ages.text
    assert len(labelled.branches[0].token_ids) == len(" The ages:\n" + LOOP_LINE + "- Farah: ")


def test_a_numbered_loop_in_a_branch_is_cut_without_showing_the_repeat():
    decoder = decoder_for(
        ("####Dinner:", "\n1. **Pizza**\n" + "".join(f"{i}. **Lemon-Cherry**\n" for i in range(2, 30))),
        ("####%%%%\n", "Done."),
    )
    events = list(decoder.stream(RawPrompt("Q\n"), branches=["Dinner"], max_branch_tokens=400, max_new_tokens=800,
                                 nonempty_branches=False))  # the list starts on a new line
    result = events[-1].result
    [dinner] = result.branches
    assert (dinner.finish_reason, dinner.text) == ("repetition", "\n1. **Pizza**\n2. **Lemon-Cherry**\n")
    assert reading_order_text(events) == raw_text(result) == "####Dinner:" + dinner.text + "####%%%%\nDone."


def test_the_guard_can_be_turned_off():
    decoder = decoder_for(*LOOPING)
    result = decoder.generate(RawPrompt("Q\n"), branches=["Ages", "Fruit"], max_branch_tokens=100,
                              max_new_tokens=800, repetition_guard=False)
    assert result.branches[0].finish_reason == "length" and len(result.branches[0].token_ids) == 100
    assert result.branches[0].text.count(LOOP_LINE) > 3


def test_the_trunk_is_not_guarded_by_default_and_can_be():
    line = "Same thing again.\n"
    decoder = decoder_for(("Q\n", "Intro.\n" + line * 40))
    plain = decoder.generate(RawPrompt("Q\n"), max_new_tokens=200)
    assert plain.finish_reason == "length" and raw_text(plain).count(line) > 5
    events = list(decoder.stream(RawPrompt("Q\n"), max_new_tokens=200, trunk_repetition_guard=True))
    guarded = events[-1].result
    assert guarded.finish_reason == "repetition"
    assert raw_text(guarded) == "Intro.\n" + line  # the repeats started inside the line: it is kept whole
    assert reading_order_text(events) == raw_text(guarded)
    assert guarded.stats.generated_tokens < len("Intro.\n" + line * 2)  # it fired within the second copy


def test_no_guard_under_a_constraint():
    """A cut would break a grammar's text, so a constrained stream is never guarded."""

    class AllowAll:
        def mask_logits(self, logits, budget=None):
            return logits

        def advance(self, token_id):
            pass

        def is_finished(self):
            return False

    decoder = decoder_for(*LOOPING)
    result = decoder.generate(RawPrompt("Q\n"), branches=["Ages"], max_branch_tokens=80, max_new_tokens=400,
                              constraint=AllowAll, trunk_repetition_guard=True)
    assert result.branches[0].finish_reason == "length"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_a_cut_branch_is_still_exactly_plain_decoding(arch):
    """Random tiny models loop on bytes; with a low threshold the guard cuts them, and what was sampled is
    still token for token plain greedy decoding of the branch's context."""
    tokenizer = byte_tokenizer()
    model = tiny_model(arch)
    decoder = ParallelBranchDecoder(model, tokenizer)
    titles = ["alpha", "b", "gamma delta", "x", "longer title here", "six"]
    result = decoder.generate("Question: list things", branches=titles, max_branch_tokens=40, max_new_tokens=400,
                              repetition_guard=2)
    assert any(b.finish_reason == "repetition" for b in result.branches)
    for b in result.branches:
        out = model.generate(torch.tensor([b.context_ids]), max_new_tokens=len(b.token_ids), do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        assert out[0, len(b.context_ids):].tolist() == b.token_ids, b.title
        if b.finish_reason == "repetition":
            assert len(b.text) < len(tokenizer.decode(b.token_ids))  # the repeats were cut


def test_adapters_report_repetition_as_stop():
    from types import SimpleNamespace

    protocol = pytest.importorskip("pbd_integrations.server.protocol")
    assert protocol.finish_reason(SimpleNamespace(finish_reason="repetition")) == "stop"
    chat_models = pytest.importorskip("pbd_integrations.langchain.chat_models")
    assert chat_models._map_finish_reason("repetition", False) == "stop"


def test_pbd_serve_passes_the_issue_11_options_on():
    protocol = pytest.importorskip("pbd_integrations.server.protocol")
    request = protocol.ChatCompletionRequest(
        model="default", messages=[{"role": "user", "content": "hi"}], repetition_guard=False,
        trunk_repetition_guard=16, plan_in_view=True, descriptive_titles=True, repeated_label_guard=False,
    )
    options = protocol._options(request, None)
    assert {k: options[k] for k in ("repetition_guard", "trunk_repetition_guard", "plan_in_view",
                                     "descriptive_titles", "repeated_label_guard")} == {
        "repetition_guard": False, "trunk_repetition_guard": 16, "plan_in_view": True, "descriptive_titles": True,
        "repeated_label_guard": False,
    }
    DecodeOptions.from_kwargs(**options)
