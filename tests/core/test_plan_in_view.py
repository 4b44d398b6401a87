"""The plan stays in view (``plan_in_view``, issue 11).

With the option, every branch's shared prefix is the prompt (and any text
before the list) followed by the whole title list, ``####<title>: ...`` per
title (`planned_entry_text`), and each branch then continues its own
``####<title>:``. The exactness guarantee reads: each branch equals plain
greedy decoding of prefix + plan + own title, which is what
``BranchResult.context_ids`` holds.
"""

from __future__ import annotations

import pytest
import torch
from scripted_model import ScriptedLM, rules
from tiny_models import byte_tokenizer, reference_tokens, tiny_model

from pbd_core import ParallelBranchDecoder, RawPrompt, ReadingOrder
from pbd_core.plan_format import planned_entry_text, seed_text

TITLES = ["alpha", "b", "gamma delta", "x", "longer title here", "six", "seven", "eight"]
STOPS = [chr(c) for c in range(33, 127, 4)]  # as in test_exactness: branches end at different lengths
FRUIT = ["Apples", "Bananas"]
PLAN_TEXT = "####Apples: ...\n####Bananas: ...\n"




def raw_text(result) -> str:
    return getattr(result, "raw_text", None) or result.text


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("k, merge", [(1, "recompute"), (3, "reuse"), (8, "recompute")])
def test_branches_equal_plain_decoding_of_prefix_plus_plan_plus_own_title(arch, k, merge, tokenizer):
    model = tiny_model(arch)
    decoder = ParallelBranchDecoder(model, tokenizer)
    titles = TITLES[:k]
    result = decoder.generate(
        "Question: list things", branches=titles, max_branch_tokens=24, max_new_tokens=400, stop=STOPS,
        merge=merge, plan_in_view=True,
    )
    plan = "".join(planned_entry_text(t) for t in titles)
    prompt_tokens = result.stats.prompt_tokens
    assert len(result.branches) == k
    for branch in result.branches:
        # context_ids hold exactly the prompt, the plan and the branch's own title ...
        assert tokenizer.decode(branch.context_ids[prompt_tokens:]) == plan + seed_text(branch.title)
        # ... and the branch is plain greedy decoding of them.
        expected = reference_tokens(model, branch.context_ids, len(branch.token_ids), tokenizer.eos_token_id, tokenizer)
        assert branch.token_ids == expected, branch.title
    assert result.stats.stage_forward_passes["parallel"] == max(len(b.token_ids) for b in result.branches)
    assert "...\n####" not in raw_text(result)  # the list itself is not part of the answer's text


def test_off_by_default_branches_see_their_own_title_only(tokenizer):
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer)
    result = decoder.generate("Question: list things", branches=TITLES[:2], max_branch_tokens=4, max_new_tokens=40)
    for branch in result.branches:
        assert tokenizer.decode(branch.context_ids[result.stats.prompt_tokens :]) == seed_text(branch.title)


# --------------------------------------------------------------------------- what the branches see


def scripted(*pairs) -> ParallelBranchDecoder:
    model = ScriptedLM(rules(*pairs))
    return ParallelBranchDecoder(model, model.tokenizer)


SEES_PLAN = (
    (PLAN_TEXT + "####Apples:", " first of two.\n####"),
    (PLAN_TEXT + "####Bananas:", " second of two.\n####"),
    ("Q\n####Apples:", " alone.\n####"),
    ("Q\n####Bananas:", " alone.\n####"),
    ("####%%%%\n", "Done."),
)


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_caller_titles_every_branch_sees_the_whole_list(merge):
    decoder = scripted(*SEES_PLAN)
    assert [b.text for b in decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge=merge).branches] == [
        " alone.\n", " alone.\n"
    ]
    events = list(decoder.stream(RawPrompt("Q\n"), branches=FRUIT, merge=merge, plan_in_view=True))
    result = events[-1].result
    assert [b.text for b in result.branches] == [" first of two.\n", " second of two.\n"]
    assert raw_text(result) == "####Apples: first of two.\n####Bananas: second of two.\n####%%%%\nDone."
    order = ReadingOrder()
    assert "".join(c for e in events for c in order.feed(e)) == raw_text(result)


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_the_conclusion_sees_the_plan_too(merge):
    bodies = rules((PLAN_TEXT + "####Apples:", " red.\n####"), (PLAN_TEXT + "####Bananas:", " yellow.\n####"))

    def script(text: str):
        if "####%%%%\n" not in text:
            return bodies(text)
        # The conclusion (after a reuse merge it sees the branches at their own, overlapping positions).
        written = text.rsplit("####%%%%\n", 1)[1]
        target = "Saw the plan." if text.startswith("Q\n" + PLAN_TEXT) else "Did not."
        return target[len(written)] if target.startswith(written) and len(written) < len(target) else None

    model = ScriptedLM(script)
    decoder = ParallelBranchDecoder(model, model.tokenizer)
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge=merge, plan_in_view=True)
    assert raw_text(result) == "####Apples: red.\n####Bananas: yellow.\n####%%%%\nSaw the plan."
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge=merge)
    assert raw_text(result).endswith("####%%%%\nDid not.")


def test_a_model_plan_is_kept_in_view_without_recomputing_it():
    model = ScriptedLM(rules(
        ("Q\n", "Intro.\n####Apples:"),
        ("Apples: ...\n####", "Bananas:"),
        ("Bananas: ...\n####", "%%%%"),
        ("Intro.\n" + PLAN_TEXT + "####Apples:", " first of two.\n####"),
        ("Intro.\n" + PLAN_TEXT + "####Bananas:", " second of two.\n####"),
        ("####%%%%\n", "Done."),
    ))
    decoder = ParallelBranchDecoder(model, model.tokenizer)
    result = decoder.generate(RawPrompt("Q\n"), plan_in_view=True)
    assert [(b.title, b.text) for b in result.branches] == [
        ("Apples", " first of two.\n"), ("Bananas", " second of two.\n")
    ]
    assert raw_text(result) == "Intro.\n####Apples: first of two.\n####Bananas: second of two.\n####%%%%\nDone."
    # The list the model wrote is still in the cache: the pass after the plan feeds the two titles only.
    titles_pass = sum(len(seed_text(t)) for t in FRUIT)
    assert titles_pass in model.calls
    assert all(n != len(PLAN_TEXT) + titles_pass for n in model.calls)


# --------------------------------------------------------------------------- sequential mode


def test_sequential_steps_see_the_plan_then_the_steps_before():
    decoder = scripted(
        (PLAN_TEXT + "####Apples:", " red.\n####"),
        (PLAN_TEXT + "####Apples: red.\n####Bananas:", " after red apples.\n####"),
        ("####%%%%\n", "Done."),
    )
    parallel = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, plan_in_view=True)
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, plan_in_view=True, parallel=False)
    assert [b.text for b in result.branches] == [" red.\n", " after red apples.\n"]
    assert raw_text(result) == "####Apples: red.\n####Bananas: after red apples.\n####%%%%\nDone."
    # The first step has exactly the context of the first branch in parallel mode.
    assert result.branches[0].context_ids == parallel.branches[0].context_ids
    tokenizer = decoder.tokenizer
    assert tokenizer.decode(result.branches[1].context_ids) == "Q\n" + PLAN_TEXT + "####Apples: red.\n####Bananas:"
