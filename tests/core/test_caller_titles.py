"""Any non-empty caller title works (issue 11).

A title is written in the branch text as `render_title` renders it, so ``:``,
``####``, ``%%%%`` and line breaks never read as the format's delimiters; the
caller's own text stays the title everywhere else (`BranchResult.title`, the
branch events). Parallel and sequential decoding write the same header, and a
branch is still exactly plain greedy decoding of its ``context_ids``.
"""

from __future__ import annotations

import random

import pytest
import torch
from scripted_model import ScriptedLM, rules
from tiny_models import byte_tokenizer, reference_tokens, tiny_model

from pbd_core import BranchStartEvent, DecodeOptions, FinalEvent, ParallelBranchDecoder, ReadingOrder, TokenEvent
from pbd_core.plan_format import (
    MAX_TITLE_CHARS,
    STEP_MARKER,
    TitleRead,
    planned_entry_text,
    read_title,
    render_title,
    seed_text,
)

TITLES = [
    "Step 1: gather data",
    "Step 2: clean it",
    "Meet at 12:30",
    "Summary:",
    "  padded title  ",
    "two\nlines",
    "a####b",
    "%%%%",
    "#1: first",
    "Issue #12",
]
PROMPT = "Question: list things"
STOPS = [chr(c) for c in range(33, 127, 4)]  # as in test_exactness: branches end at different lengths




# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    "title, rendered",
    [
        ("Step 1: gather data", "Step 1： gather data"),  # ':' as FULLWIDTH COLON
        ("Meet at 12:30", "Meet at 12：30"),
        ("http://x.org", "http：//x.org"),
        ("Summary:", "Summary"),  # a trailing colon would double the format's own
        ("Summary : ", "Summary"),
        (":", "："),  # nothing but colons: kept, rendered
        ("::a::", "：：a"),
        ("  padded title  ", "padded title"),
        ("two\nlines", "two lines"),
        ("crlf \r\n  and\u2028separator", "crlf and separator"),
        ("tab\tinside", "tab\tinside"),  # not a line break: kept
        ("a####b", "a＃＃＃＃b"),  # a step marker inside
        ("x #####", "x ＃＃＃＃＃"),
        ("#1 priority", "＃1 priority"),  # a leading '#' would lengthen the marker
        ("## heading", "＃＃ heading"),
        ("Issue #12", "Issue #12"),  # a lone '#' inside is harmless: kept
        ("C#", "C#"),
        ("%%%%", "％％％％"),  # with the '####' before it: the close marker
        ("%%%%%x", "％％％％％x"),
        ("%%%x", "%%%x"),
        ("x %%%% y", "x %%%% y"),  # not after '####': harmless, kept
        ("Mercury", "Mercury"),
    ],
)
def test_render_title(title, rendered):
    assert render_title(title) == rendered
    assert seed_text(title) == f"{STEP_MARKER}{rendered}:"


@pytest.mark.parametrize("title", ["", " ", "\n", " \t\r\n ", "\u2028"])
def test_render_title_refuses_a_title_with_nothing_to_write(title):
    with pytest.raises(ValueError, match="non-space character"):
        render_title(title)


def _random_titles(n: int, seed: int = 0) -> list[str]:
    alphabet = [":", "#", "%", "\n", "\r", " ", "\t", "a", "B", "1", "\u2028", "：", "-"]
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def test_a_rendered_title_reads_back_as_itself_and_never_forms_a_delimiter():
    checked = 0
    for title in _random_titles(3000):
        if not title.strip():
            continue
        rendered = render_title(title)
        assert rendered and rendered == rendered.strip()
        assert ":" not in rendered and STEP_MARKER not in rendered and rendered.splitlines() == [rendered]
        assert not rendered.startswith("#") and not rendered.startswith("%%%%")
        # The format's own reader sees exactly one title, ending at the format's colon.
        assert read_title(rendered + ": body") == TitleRead("title", rendered), repr(title)
        assert render_title(rendered) == rendered  # idempotent
        checked += 1
    assert checked > 2000


def test_titles_the_model_plans_are_written_unchanged():
    """Rendering changes nothing `read_title` accepts (one line), so planning writes what it did before."""
    checked = 0
    for text in _random_titles(3000, seed=1):
        read = read_title(text + ":")
        if read.status != "title" or read.title.splitlines() != [read.title] or read.title.startswith("%%%%"):
            continue
        assert render_title(read.title) == read.title, repr(text)
        assert planned_entry_text(read.title) == f"####{read.title}: ...\n"
        checked += 1
    assert checked > 300


def test_a_planned_title_that_starts_like_the_close_marker_is_no_longer_written_as_one():
    """``####  %%%%x:`` reads as the title ``%%%%x``; seeding ``####%%%%x:`` would close the block."""
    read = read_title("  %%%%x:")
    assert read == TitleRead("title", "%%%%x")
    assert seed_text(read.title) == "####％％％％x:"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "branches, message",
    [
        ([""], "branch title 0 is empty"),
        (["   "], "branch title 0 is only whitespace"),
        (["Step 1: ok", "\n\t"], "branch title 1 is only whitespace"),
        (["a", "b", ""], "branch title 2 is empty"),
    ],
)
def test_only_titles_with_nothing_to_write_are_errors(branches, message):
    with pytest.raises(ValueError, match=message):
        DecodeOptions(branches=branches)
    model = ScriptedLM(rules(("Q", " fine")), max_positions=64)
    decoder = ParallelBranchDecoder(model, model.tokenizer)
    with pytest.raises(ValueError, match=message):
        decoder.stream("Q", branches=branches)  # raises on the call, before any forward pass
    assert model.calls == []


def test_any_other_title_is_accepted():
    long_title = "Step 1: " + "x" * 300  # longer than the model may write (MAX_TITLE_CHARS): fine for a caller
    assert len(long_title) > MAX_TITLE_CHARS
    options = DecodeOptions(branches=TITLES + [long_title, ":", "\u200b"], max_branches=16)
    assert options.branches[-3] == long_title


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("arch, merge", [("llama", "recompute"), ("qwen2", "reuse"), ("gemma3", "recompute")])
def test_titles_with_delimiters_keep_branches_exact(arch, merge):
    tokenizer = byte_tokenizer()
    model = tiny_model(arch)
    decoder = ParallelBranchDecoder(model, tokenizer)
    result = decoder.generate(
        PROMPT, branches=TITLES, max_branch_tokens=16, max_new_tokens=400, stop=STOPS, merge=merge
    )
    assert [b.title for b in result.branches] == TITLES  # the caller's own text, exactly
    assert len({len(b.token_ids) for b in result.branches}) > 1, "branches should have unequal lengths"
    n_prompt = result.stats.prompt_tokens
    for branch in result.branches:
        # The model saw the shared prompt, then the rendered header: no stray delimiter.
        assert tokenizer.decode(branch.context_ids[n_prompt:]) == seed_text(branch.title)
        expected = reference_tokens(model, branch.context_ids, len(branch.token_ids), tokenizer.eos_token_id, tokenizer)
        assert branch.token_ids == expected, branch.title
    assert result.stats.stage_forward_passes["parallel"] == max(len(b.token_ids) for b in result.branches)
    # Reading order holds the rendered headers, one per branch, in order.
    headers = [seed_text(t) for t in TITLES]
    positions = [result.raw_text.index(h) for h in headers]
    assert positions == sorted(positions)


def test_events_carry_the_callers_titles_and_the_text_the_rendered_headers():
    tokenizer = byte_tokenizer()
    decoder = ParallelBranchDecoder(tiny_model("llama"), tokenizer)
    events = list(decoder.stream(PROMPT, branches=TITLES, max_branch_tokens=8, max_new_tokens=200, stop=STOPS))
    starts = [e for e in events if isinstance(e, BranchStartEvent)]
    assert [e.title for e in starts] == TITLES
    first_text = {}
    for e in events:
        if isinstance(e, TokenEvent) and e.branch is not None:
            first_text.setdefault(e.branch, e.text)
    assert [first_text[i] for i in range(len(TITLES))] == [seed_text(t) for t in TITLES]
    order = ReadingOrder()
    text = "".join(piece for e in events for piece in order.feed(e))
    result = events[-1].result
    assert isinstance(events[-1], FinalEvent) and text == result.raw_text
    assert [b.title for b in result.branches] == TITLES


def test_the_model_sees_the_rendered_title_and_branches_stay_apart():
    """A scripted model answers only after the rendered header, and would write LEAK if it saw a sibling."""
    titles = ["Step 1: gather data", "Step 2: clean it"]
    rendered = [render_title(t) for t in titles]
    model = ScriptedLM(
        rules((f"####{rendered[0]}:", " got it."), (f"####{rendered[1]}:", " clean."), leak_guard=rendered)
    )
    decoder = ParallelBranchDecoder(model, model.tokenizer)
    result = decoder.generate("Q", branches=titles, max_branch_tokens=20, max_new_tokens=60)
    assert [(b.title, b.text) for b in result.branches] == [(titles[0], " got it."), (titles[1], " clean.")]
    assert "####Step 1： gather data: got it.\n####Step 2： clean it: clean.\n####%%%%\n" in result.raw_text
    assert result.text == "**Step 1: gather data**\n\ngot it.\n\n**Step 2: clean it**\n\nclean."  # what a user reads


def test_sequential_mode_writes_the_same_headers_and_is_exact():
    tokenizer = byte_tokenizer()
    model = tiny_model("llama")
    decoder = ParallelBranchDecoder(model, tokenizer)
    common = dict(branches=TITLES, max_branch_tokens=12, max_new_tokens=400, stop=STOPS)
    parallel = decoder.generate(PROMPT, **common)
    sequential = decoder.generate(PROMPT, parallel=False, **common)
    assert [b.title for b in sequential.branches] == TITLES
    assert sequential.parallel is False and parallel.parallel is True
    for branch in sequential.branches:
        seed_ids = tokenizer.encode(seed_text(branch.title), add_special_tokens=False)
        assert branch.context_ids[-len(seed_ids):] == seed_ids
        expected = reference_tokens(model, branch.context_ids, len(branch.token_ids), tokenizer.eos_token_id, tokenizer)
        assert branch.token_ids == expected, branch.title
    # The first step has the same context in both modes (prompt + the same rendered header).
    assert sequential.branches[0].context_ids == parallel.branches[0].context_ids
    assert sequential.branches[0].token_ids == parallel.branches[0].token_ids
    headers = [seed_text(t) for t in TITLES]
    for answer in (parallel, sequential):
        positions = [answer.raw_text.index(h) for h in headers]
        assert positions == sorted(positions)


def test_a_title_longer_than_a_planned_one_decodes():
    tokenizer = byte_tokenizer()
    model = tiny_model("llama")
    decoder = ParallelBranchDecoder(model, tokenizer)
    titles = ["Step 1: " + "gather the data " * 12, "Step 2: clean it"]
    result = decoder.generate(PROMPT, branches=titles, max_branch_tokens=8, max_new_tokens=100, stop=STOPS)
    assert [b.title for b in result.branches] == titles
    for branch in result.branches:
        expected = reference_tokens(model, branch.context_ids, len(branch.token_ids), tokenizer.eos_token_id, tokenizer)
        assert branch.token_ids == expected


@pytest.mark.slow
def test_default_model_titles_with_colons_are_exact_in_both_modes(default_decoder_fp32):
    """On a real tokenizer ``：`` is one token, as ``:`` is; every branch is still exact."""
    decoder = default_decoder_fp32
    titles = ["Step 1: gather data", "Step 2: clean it", "Step 3: report at 12:30"]
    prompt = "Plan a small data project in three steps."
    for parallel in (True, False):
        result = decoder.generate(prompt, branches=titles, max_branch_tokens=16, max_new_tokens=64, parallel=parallel)
        assert [b.title for b in result.branches] == titles
        for branch in result.branches:
            seed_ids = decoder.tokenizer.encode(seed_text(branch.title), add_special_tokens=False)
            assert branch.context_ids[-len(seed_ids):] == seed_ids
            eos = min(decoder.eos_token_ids)
            expected = reference_tokens(decoder.model, branch.context_ids, len(branch.token_ids), eos, decoder.tokenizer)
            assert branch.token_ids == expected, (parallel, branch.title)
    plain, rendered = ("####Step 1: gather data:", seed_text(titles[0]))
    encode = decoder.tokenizer.encode
    assert len(encode(plain, add_special_tokens=False)) == len(encode(rendered, add_special_tokens=False))
