"""Bad input fails at once with a clear ValueError, before any compute."""

import warnings

import pytest
from scripted_model import ScriptedLM, rules
from tiny_models import byte_tokenizer, tiny_model

from pbd_core import DecodeOptions, ParallelBranchDecoder, RawPrompt


@pytest.fixture()
def decoder():
    model = ScriptedLM(rules(("Q", " fine")), max_positions=64)
    return ParallelBranchDecoder(model, model.tokenizer)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
        ({"max_new_tokens": -5}, "max_new_tokens must be a positive int"),
        ({"max_branch_tokens": 0}, "max_branch_tokens must be a positive int"),
        ({"max_branches": 0}, "max_branches must be a positive int"),
        ({"merge": "average"}, "merge must be one of"),
        ({"branches": ["a", "b", "c"], "max_branches": 2}, "got 3 branches but max_branches is 2"),
        ({"branches": []}, "branches must not be empty"),
        ({"branches": "abc"}, "branches must be a list of strings"),
        ({"branches": ["  "]}, "branch title 0 is only whitespace"),
        ({"branches": ["has: colon", ""]}, "branch title 1 is empty"),
        ({"temperature": -1}, "temperature must be"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be"),
        ({"stop": "STOP"}, "stop must be a list of strings"),
        ({"stop": [""]}, "stop strings must not be empty"),
        ({"seed": "7"}, "seed must be an int"),
        ({"max_tokens": 5}, "unknown decoding option"),
    ],
)
def test_bad_options_raise_before_any_forward_pass(decoder, options, message):
    with pytest.raises(ValueError, match=message):
        decoder.stream("Q", **options)  # raises on the call, not on the first next()
    assert decoder.model.calls == []


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user"}], [{"role": "user", "content": ""}], RawPrompt(""), 42])
def test_empty_or_malformed_prompts_are_rejected(decoder, prompt):
    with pytest.raises(ValueError):
        decoder.generate(prompt)
    assert decoder.model.calls == []


def test_prompt_longer_than_the_context_window_is_rejected(decoder):
    with pytest.raises(ValueError, match="context window is 64 tokens"):
        decoder.generate("Q" * 100)


def test_generation_stops_at_the_context_window_with_length():
    model = ScriptedLM(rules(("Q", "x" * 200)), max_positions=32)
    decoder = ParallelBranchDecoder(model, model.tokenizer)
    result = decoder.generate(RawPrompt("Q"), max_new_tokens=500)
    assert result.finish_reason == "length" and len(result.text) < 32


def test_attention_without_custom_masks_is_switched_to_sdpa_with_a_warning():
    model = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.warns(UserWarning, match="switched the model to 'sdpa'"):
        decoder = ParallelBranchDecoder(model, byte_tokenizer())
    assert decoder.model.config._attn_implementation in ("sdpa", "pbd_sdpa")  # pbd_sdpa: sdpa with GQA under masks


def test_eager_attention_is_accepted_as_is():
    model = tiny_model("llama")
    model.config._attn_implementation = "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ParallelBranchDecoder(model, byte_tokenizer())


def test_options_object_lists_known_names_for_a_typo():
    with pytest.raises(ValueError, match="known options: .*max_new_tokens"):
        DecodeOptions.from_kwargs(max_new_token=5)


def test_a_failed_call_leaves_the_decoder_usable(decoder):
    with pytest.raises(ValueError):
        decoder.generate("Q", merge="nope")
    assert decoder.generate(RawPrompt("Q")).text == " fine"
