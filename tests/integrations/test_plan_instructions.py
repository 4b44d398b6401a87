"""Planning by default (issue 11): both adapters (LlamaIndex: tests/integrations/llama_index/test_llm.py) add the branch-format instructions to the system
message on the user's own prompts, so chains, query engines and agents get parallel branches without
code changes; an option turns it off, and it stays out of the way where it does not apply."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

from pbd_integrations import ChatParallelBranch
from pbd_integrations.prompts import PARALLEL_SYSTEM_PROMPT, PLANNING_SYSTEM_PROMPT, planning_instructions

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "langchain"))
from lc_fakes import FakeDecoder  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


def prompt_of(decoder: FakeDecoder) -> str:
    prompt, _ = decoder.calls[-1]
    return prompt.text


def test_the_default_chat_model_asks_the_model_to_plan():
    decoder = FakeDecoder()
    ChatParallelBranch(model=decoder).invoke("Check each of these three records.")
    assert PLANNING_SYSTEM_PROMPT in prompt_of(decoder)


def test_the_users_system_message_comes_first_and_is_kept():
    decoder = FakeDecoder()
    ChatParallelBranch(model=decoder).invoke([SystemMessage("You are terse."), HumanMessage("Hi")])
    text = prompt_of(decoder)
    assert text.index("You are terse.") < text.index(PLANNING_SYSTEM_PROMPT)


@pytest.mark.parametrize(
    "call",
    [
        {"plan_instructions": False},
        {"branches": ["Tea", "Coffee"]},
        {"parallel": False},
    ],
)
def test_no_instructions_where_the_model_does_not_plan(call):
    decoder = FakeDecoder()
    ChatParallelBranch(model=decoder).invoke("Compare tea and coffee.", **call)
    assert "####%%%%" not in prompt_of(decoder)


def test_a_conversation_that_already_has_the_format_is_left_as_it_is():
    decoder = FakeDecoder()
    ChatParallelBranch(model=decoder).invoke([SystemMessage(PARALLEL_SYSTEM_PROMPT), HumanMessage("Hi")])
    text = prompt_of(decoder)
    assert PLANNING_SYSTEM_PROMPT not in text and text.count("####%%%%") == PARALLEL_SYSTEM_PROMPT.count("####%%%%")


def test_tools_and_structured_output_get_their_own_instructions_only(monkeypatch):
    from pbd_integrations.langchain import chat_models

    monkeypatch.setattr(chat_models, "_cached_constraint", lambda *args: (lambda: None))
    decoder = FakeDecoder(before=['{"a": 1}'])
    ChatParallelBranch(model=decoder).bind_tools([get_weather]).invoke("Weather in Paris?")
    assert "####%%%%" not in prompt_of(decoder)
    ChatParallelBranch(model=decoder).invoke("Give JSON.", response_format={"type": "json_object"})
    assert "####%%%%" not in prompt_of(decoder)


def test_the_field_turns_it_off_for_every_call():
    decoder = FakeDecoder()
    ChatParallelBranch(model=decoder, plan_instructions=False).invoke("Check each record.")
    assert "####%%%%" not in prompt_of(decoder)


def test_planning_instructions_reads_list_contents_too():
    messages = [{"role": "user", "content": [{"type": "text", "text": "steps then ####%%%% and a conclusion"}]}]
    assert planning_instructions(messages, branches=None, parallel=True) is None
    assert planning_instructions([{"role": "user", "content": "hi"}], branches=None, parallel=True) == PLANNING_SYSTEM_PROMPT


def test_a_model_known_to_answer_worse_with_them_gets_none_by_default():
    """SmolLM2-135M copied the instructions' example instead of answering (``MODELS_WITHOUT_PLANNING_INSTRUCTIONS``)."""
    decoder = FakeDecoder(model_name="SmolLM2-135M-Instruct")
    ChatParallelBranch(model=decoder).invoke("Count from 1 to 10.")
    assert "####%%%%" not in prompt_of(decoder)
    ChatParallelBranch(model=decoder, plan_instructions=True).invoke("Count from 1 to 10.")
    assert PLANNING_SYSTEM_PROMPT in prompt_of(decoder)

