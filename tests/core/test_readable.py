"""What the user reads (`pbd_core.readable`): steps under their titles, no format markers.

The same answers three ways: `render` from the structure, `ReadableText` from
hand-made engine events, and the engine itself on a scripted model, whose
`DecodeResult.text` must be the readable text while `raw_text` keeps the
branch format exactly as before.
"""

import pytest
from scripted_model import FRUIT, FRUIT_BODIES, PLAN, decoder_for

from pbd_core import (
    BranchEndEvent,
    BranchStartEvent,
    DecodeOptions,
    DecodeResult,
    DecodeStats,
    FinalEvent,
    RawPrompt,
    ReadableText,
    ReadingOrder,
    TokenEvent,
)
from pbd_core.plan_format import CLOSE_TEXT, branch_separator, seed_text
from pbd_core.readable import ReadableEvents, render, render_step, separator_before_block, title_line

# (name, pieces, readable text): a piece is text outside branches or a block [(title, body), ...],
# with ``None`` after a block that the budget cut before its close marker.
TABLE = [
    ("no branches", ["Just an answer.\n"], "Just an answer.\n"),
    ("no branches, markers written by the model", ["a ####b: c"], "a ####b: c"),
    (
        "one block",
        ["Compare.\n", [("Tea", " Tea is hot.\n"), ("Coffee", "\n\nCoffee is strong.")], "\nBoth wake you up."],
        "Compare.\n\n**Tea**\n\nTea is hot.\n\n**Coffee**\n\nCoffee is strong.\n\nBoth wake you up.",
    ),
    (
        "one block, caller titles, no intro",
        [[("Tea", " hot."), ("Coffee", " strong.")], "\nDone."],
        "**Tea**\n\nhot.\n\n**Coffee**\n\nstrong.\n\nDone.",
    ),
    (
        "two blocks",
        [[("A", " a.\n"), ("B", " b.\n")], "\nThen:\n", [("C", " c.\n"), ("D", " d.\n")], "\nEnd."],
        "**A**\n\na.\n\n**B**\n\nb.\n\nThen:\n\n**C**\n\nc.\n\n**D**\n\nd.\n\nEnd.",
    ),
    (
        "two blocks, nothing between them",
        [[("A", " a.")], "\n", [("B", " b.")], ""],
        "**A**\n\na.\n\n**B**\n\nb.",
    ),
    (
        "cut in a branch (no close marker, no conclusion)",
        ["Intro", [("Tea", " Tea is"), ("Coffee", "")], None],
        "Intro\n\n**Tea**\n\nTea is\n\n**Coffee**",
    ),
    (
        "cut in the conclusion",
        [[("Tea", " hot.\n")], "\nIn sh"],
        "**Tea**\n\nhot.\n\nIn sh",
    ),
    (
        "titles with ':' and a line break keep the caller's text",
        [[("Step 1: gather data", " done."), ("12:30\nlunch", " eat.")], ""],
        "**Step 1: gather data**\n\ndone.\n\n**12:30 lunch**\n\neat.",
    ),
    (
        "a body with its own paragraphs and markdown",
        [[("Pros", "\n### Speed\n\n- fast\n- cheap\n\n")], "\nOK"],
        "**Pros**\n\n### Speed\n\n- fast\n- cheap\n\nOK",
    ),
]


def engine_events(pieces, *, words=True):
    """Events as the engine emits them for ``pieces``: seeds, interleaved branch tokens, the close marker.

    Returns ``(events, raw text)``; the raw text is what `DecodeResult.raw_text` would be.
    """
    events, raw, index = [], "", 0
    pieces = list(pieces)
    for position, piece in enumerate(pieces):
        if piece is None:
            continue
        if isinstance(piece, str):
            for chunk in _chunks(piece, words):
                events.append(TokenEvent(chunk, None, "merge", 1))
            raw += piece
            continue
        block = sum(1 for p in pieces[:position] if isinstance(p, list))
        first = index
        for title, _ in piece:
            events.append(BranchStartEvent(index, title, block))
            events.append(TokenEvent(seed_text(title), index, "parallel", None))
            index += 1
        bodies = [_chunks(body + branch_separator(body), words) for _, body in piece]
        for step in range(max(len(b) for b in bodies) + 1):
            for slot, chunks in enumerate(bodies):
                if step < len(chunks):
                    events.append(TokenEvent(chunks[step], first + slot, "parallel", 2))
                elif step == len(chunks):
                    events.append(BranchEndEvent(first + slot, "end_marker", piece[slot][1]))
        raw += "".join(seed_text(t) + b + branch_separator(b) for t, b in piece)
        cut = position + 1 < len(pieces) and pieces[position + 1] is None
        if not cut:
            events.append(TokenEvent(CLOSE_TEXT, None, "merge", None))
            raw += CLOSE_TEXT
    result = DecodeResult(raw, [], DecodeStats(), "eos")
    events.append(FinalEvent(result))
    return events, raw


def _chunks(text, words):
    if not words:
        return [text] if text else []
    out, current = [], ""
    for char in text:
        current += char
        if char in " \n":
            out.append(current)
            current = ""
    return out + ([current] if current else [])


def readable_of(events):
    readable = ReadableText()
    return "".join(chunk for event in events for chunk in readable.feed(event))


@pytest.mark.parametrize(("name", "pieces", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_render_table(name, pieces, expected):
    assert render([p for p in pieces if p is not None]) == expected


@pytest.mark.parametrize("words", [True, False], ids=["word tokens", "one chunk per piece"])
@pytest.mark.parametrize(("name", "pieces", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_streamed_readable_text_equals_render(name, pieces, expected, words):
    events, raw = engine_events(pieces, words=words)
    assert readable_of(events) == expected
    order = ReadingOrder()  # and the raw reading order is untouched
    assert "".join(c for e in events for c in order.feed(e)) == raw


@pytest.mark.parametrize(("name", "pieces", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_no_protocol_markers_in_readable_text_of_engine_steps(name, pieces, expected):
    if name.startswith("no branches, markers"):
        pytest.skip("text the model wrote itself outside engine steps is kept")
    assert "####" not in expected and "%%%%" not in expected


def test_plain_answer_events_pass_through_chunk_for_chunk():
    """A plain decode (what the remote executor asks `pbd serve` for) is not changed, even per chunk."""
    events = [TokenEvent(t, None, "merge", i) for i, t in enumerate(["  ", "####", "A:", " x\n", "\n"])]
    mapped = ReadableEvents()
    assert [m for e in events for m in mapped.feed(e)] == events


def test_helpers():
    assert title_line("  Tea \n time ") == "**Tea time**"
    assert render_step("Tea", "  \n") == "**Tea**"
    assert render_step("Tea", "\n hot \n") == "**Tea**\n\nhot"
    assert [separator_before_block(t) for t in ("", " \n", "a", "a\n", "a\n\n")] == ["", "", "\n\n", "\n", ""]


def test_output_format_is_validated():
    assert DecodeOptions(output_format="raw").output_format == "raw"
    with pytest.raises(ValueError, match="output_format"):
        DecodeOptions(output_format="markdown")


def test_decode_result_raw_text_defaults_to_text():
    result = DecodeResult("####A: x\n####%%%%\n", [], DecodeStats(), "eos")
    assert result.raw_text == result.text


# --------------------------------------------------------------------------- the engine

RAW = "Intro.\n####Apples: red.\n####Bananas: long and yellow.\n####Cherries: small.\n####%%%%\nDone."
READABLE = "Intro.\n\n**Apples**\n\nred.\n\n**Bananas**\n\nlong and yellow.\n\n**Cherries**\n\nsmall.\n\nDone."


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_engine_text_is_readable_and_raw_text_is_the_format(merge):
    decoder = decoder_for(*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."), leak_guard=FRUIT)
    events = list(decoder.stream(RawPrompt("Q\n"), merge=merge))
    result = events[-1].result
    assert result.text == READABLE
    assert result.raw_text == RAW
    assert readable_of(events) == result.text  # what adapters stream adds up to the text
    order = ReadingOrder()
    assert "".join(c for e in events for c in order.feed(e)) == result.raw_text


def test_engine_output_format_raw_gives_the_old_text():
    decoder = decoder_for(*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."), leak_guard=FRUIT)
    result = decoder.generate(RawPrompt("Q\n"), output_format="raw")
    assert result.text == result.raw_text == RAW


def test_engine_two_blocks_render_in_order():
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
    )
    result = decoder.generate(RawPrompt("Q\n"), merge="recompute")
    assert result.raw_text == "####A: a.\n####B: b.\n####%%%%\nThen:\n####C: c.\n####D: d.\n####%%%%\nEnd."
    assert result.text == render(
        [[(b.title, b.text) for b in result.branches if b.block == 0], "\nThen:\n",
         [(b.title, b.text) for b in result.branches if b.block == 1], "\nEnd."]
    )
    assert result.text == "**A**\n\na.\n\n**B**\n\nb.\n\nThen:\n\n**C**\n\nc.\n\n**D**\n\nd.\n\nEnd."


def test_engine_caller_titles_with_colons_and_sequential_steps():
    titles = ["Step 1: apples", "Step 2: bananas"]
    decoder = decoder_for(
        ("####Step 1： apples:", " red.\n####"),
        ("####Step 2： bananas:", " yellow.\n####"),
        ("####%%%%", "\nDone."),
    )
    for parallel in (True, False):
        result = decoder.generate(RawPrompt("Q\n"), branches=titles, parallel=parallel)
        assert result.raw_text == "####Step 1： apples: red.\n####Step 2： bananas: yellow.\n####%%%%\nDone."
        assert result.text == "**Step 1: apples**\n\nred.\n\n**Step 2: bananas**\n\nyellow.\n\nDone."


def test_engine_answer_cut_in_a_branch_renders_what_exists():
    decoder = decoder_for(*FRUIT_BODIES, ("####%%%%", "\nDone."))
    result = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_new_tokens=9)
    assert result.finish_reason == "length"
    assert "####" in result.raw_text and "####%%%%" not in result.raw_text
    assert result.text == render([[(b.title, b.text) for b in result.branches]])
    assert result.raw_text == "####Apples: re\n####Bananas: lo\n####Cherries: sm\n"  # 3 tokens each
    assert result.text == "**Apples**\n\nre\n\n**Bananas**\n\nlo\n\n**Cherries**\n\nsm"


def test_engine_plain_answer_is_unchanged():
    decoder = decoder_for(("Q\n", "Answer: 42.\n"))
    result = decoder.generate(RawPrompt("Q\n"))
    assert result.text == result.raw_text == "Answer: 42.\n"
    plain = decoder_for(("Q\n", "####A: one\n####%%%%\nEnd")).generate(RawPrompt("Q\n"), parallel=False)
    assert plain.text == plain.raw_text  # the model's own format in plain decoding is its text


async def test_engine_async_text_is_readable():
    decoder = decoder_for(*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."), leak_guard=FRUIT)
    result = await decoder.agenerate(RawPrompt("Q\n"))
    assert (result.text, result.raw_text) == (READABLE, RAW)
