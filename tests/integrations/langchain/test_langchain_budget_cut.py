"""A budget cut is surfaced, not raised: ``finish_reason: "length"`` in ``response_metadata``.

Under a grammar the engine completes the JSON when the budget runs out (see
``tests/integrations/test_grammar_budget.py``), so a cut answer still parses;
the adapter reports that it was cut. Scripted decoders first, then the real
default model at budgets far too small for what it would write.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from pbd_core import FinalEvent
from pbd_integrations import ChatParallelBranch
from pbd_integrations.langchain import chat_models

from lc_fakes import FakeDecoder


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


@dataclasses.dataclass(eq=False)
class CutDecoder(FakeDecoder):
    """A scripted answer that ends because the budget ran out."""

    def stream(self, prompt, **options):
        for event in super().stream(prompt, **options):
            if isinstance(event, FinalEvent):
                event = FinalEvent(dataclasses.replace(event.result, finish_reason="length"))
            yield event


@pytest.fixture
def no_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted decoders have no real tokenizer to compile a grammar for."""
    monkeypatch.setattr(chat_models, "_cached_constraint", lambda *args: (lambda: None))


def test_a_completed_call_cut_by_the_budget_is_a_call_with_finish_reason_length(no_grammar) -> None:
    decoder = CutDecoder(before=["<tool_call>", '\n{"name": "get_weather", "arguments": {"city": ""}}', "\n</tool_call>"])
    message = ChatParallelBranch(model=decoder).bind_tools([get_weather], tool_choice="any").invoke("Weather?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": ""})]
    assert message.response_metadata["finish_reason"] == "length"
    assert message.response_metadata["pbd_finish_reason"] == "length"


def test_a_call_cut_off_without_a_grammar_is_returned_as_text(no_grammar) -> None:
    # (An engine that does not pass budgets to its constraint, or a custom one.)
    decoder = CutDecoder(before=["<tool_call>", '\n{"name": "get_weather", "arguments": {"city": "Par'])
    message = ChatParallelBranch(model=decoder).bind_tools([get_weather]).invoke("Weather?")
    assert message.tool_calls == []
    assert message.content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert message.response_metadata["finish_reason"] == "length"


def test_a_structured_answer_cut_by_the_budget_parses_and_says_length(no_grammar) -> None:
    decoder = CutDecoder(before=['{"setup": "Why did the cat', '", "punchline": ""}'])
    chain = ChatParallelBranch(model=decoder).with_structured_output(Joke, include_raw=True)
    out = chain.invoke("Tell me a joke about cats.")
    assert out["parsed"] == Joke(setup="Why did the cat", punchline="")
    assert out["raw"].response_metadata["finish_reason"] == "length"


def test_property_order_of_the_schema_is_the_order_of_the_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    specs: list[str] = []
    monkeypatch.setattr(chat_models, "_cached_constraint", lambda tokenizer, kind, spec, choice: specs.append(spec) or (lambda: None))
    decoder = FakeDecoder(before=['{"setup": "a", "punchline": "b"}'])
    ChatParallelBranch(model=decoder).with_structured_output(Joke).invoke("x")
    assert list(json.loads(specs[0])["properties"]) == ["setup", "punchline"]  # not sorted: the model writes setup first


# --------------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_structured_output_at_a_tiny_budget_is_a_valid_but_cut_object(default_decoder) -> None:
    llm = ChatParallelBranch(model=default_decoder, temperature=0, max_tokens=16)
    out = llm.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke about cats.")
    assert isinstance(out["parsed"], Joke), out["raw"].content
    assert out["raw"].response_metadata["finish_reason"] == "length"
    assert out["raw"].usage_metadata["output_tokens"] <= 16


@pytest.mark.slow
def test_a_tool_call_at_a_tiny_budget_is_a_whole_call(default_decoder) -> None:
    llm = ChatParallelBranch(model=default_decoder, temperature=0, max_tokens=30)
    message = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in the capital of France?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"], message.content
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
