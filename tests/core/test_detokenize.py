"""Incremental detokenizing and string matching across token boundaries."""

from tiny_models import byte_tokenizer

from pbd_core.detokenize import TextStream, find_first, held_back


def test_incremental_text_equals_full_decode_even_for_multibyte_characters():
    tokenizer = byte_tokenizer()
    text = "héllo → wörld ####"
    ids = tokenizer(text)["input_ids"]
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == stream.text == text
    assert "" in pieces  # a partial UTF-8 character waits for its last byte
    assert stream.ends[-1] == len(text)


def test_tokens_before_a_character_offset():
    tokenizer = byte_tokenizer()
    stream = TextStream(tokenizer)
    for i in tokenizer("ab####")["input_ids"]:
        stream.push(i)
    assert stream.tokens_before(2) == 2
    assert stream.tokens_before(0) == 0


def test_find_first_returns_the_earliest_needle():
    assert find_first("xx STOP yy ####", ["####", "STOP"]) == (3, "STOP")
    assert find_first("nothing", ["####"]) is None


def test_held_back_keeps_a_possible_marker_prefix_out_of_the_stream():
    assert held_back("text ##", ["####"]) == 2
    assert held_back("text #", ["####", "#END"]) == 1
    assert held_back("text", ["####"]) == 0
    assert held_back("abc ST", ["STOP"]) == 2
