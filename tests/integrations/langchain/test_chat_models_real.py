"""ChatParallelBranch contracts on the real default model (SmolLM2-135M-Instruct, greedy)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from pbd_integrations import ChatParallelBranch
from pbd_integrations.langchain import BRANCH_TOKEN_EVENT

pytestmark = pytest.mark.slow

BRANCHES = ["Cats", "Dogs", "Fish"]


@pytest.fixture(scope="module")
def llm(default_decoder) -> ChatParallelBranch:
    return ChatParallelBranch(model=default_decoder, max_tokens=48, max_branch_tokens=12)


def test_stream_equals_invoke_with_branches(llm: ChatParallelBranch) -> None:
    message = llm.invoke("Describe each pet briefly.", branches=BRANCHES)
    streamed = "".join(c.text for c in llm.stream("Describe each pet briefly.", branches=BRANCHES))
    assert streamed == message.content
    titles = [b["title"] for b in message.response_metadata["branches"]]
    assert titles == BRANCHES
    # All three branches were decoded side by side: fewer passes than tokens.
    assert message.response_metadata["tokens_per_forward_pass"] > 1
    assert message.usage_metadata["output_tokens"] <= 48


def test_custom_events_carry_every_branch_token(llm: ChatParallelBranch) -> None:
    class Log(BaseCallbackHandler):
        events: list[dict] = []

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == BRANCH_TOKEN_EVENT:
                self.events.append(data)

    log = Log()
    message = llm.invoke("Describe each pet briefly.", branches=BRANCHES, config={"callbacks": [log]})
    per_branch = {i: "".join(e["text"] for e in log.events if e["branch"] == i) for i in range(len(BRANCHES))}
    # Each branch's events spell exactly the branch as it appears in the answer.
    for i, title in enumerate(BRANCHES):
        assert per_branch[i].startswith(f"####{title}:")
        assert per_branch[i] in message.response_metadata["raw_text"]  # the content shows it readable
        assert f"**{title}**" in message.content


async def test_async_decode_leaves_the_loop_free(llm: ChatParallelBranch) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    message = await llm.ainvoke("Name two colours.")
    elapsed = time.perf_counter() - started
    task.cancel()
    assert message.content
    assert ticks >= 0.25 * elapsed / 0.01


def test_stop_sequences_from_constructor_and_call(default_decoder) -> None:
    plain = ChatParallelBranch(model=default_decoder, max_tokens=24).invoke("Count from 1 to 10, separated by commas.")
    assert "5" in plain.content  # the tiny model can count; the stops below cut inside this text
    cut = plain.content.index("5")
    stop_word = plain.content[cut : cut + 2]  # spans the digit and the following separator
    stopped = ChatParallelBranch(model=default_decoder, max_tokens=24, stop=[stop_word]).invoke(
        "Count from 1 to 10, separated by commas."
    )
    assert stopped.content == plain.content[:cut]
    per_call = ChatParallelBranch(model=default_decoder, max_tokens=24).invoke(
        "Count from 1 to 10, separated by commas.", stop=[stop_word]
    )
    assert per_call.content == stopped.content


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather for a city."""
    return "sunny"


def test_forced_tool_call_is_valid_for_the_schema(llm: ChatParallelBranch) -> None:
    message = llm.bind_tools([get_weather], tool_choice="any").invoke("What's the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    schema = get_weather.tool_call_schema.model_json_schema()
    jsonschema.validate(message.tool_calls[0]["args"], schema)
    assert message.response_metadata["finish_reason"] == "tool_calls"


class Pet(BaseModel):
    name: str = Field(description="the pet's name", max_length=20)
    legs: int = Field(description="number of legs")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_always_parses(llm: ChatParallelBranch, method: str) -> None:
    pet = llm.with_structured_output(Pet, method=method).invoke("Invent a pet dog.")
    assert isinstance(pet, Pet)


def test_tool_round_trip_renders_the_result_back(llm: ChatParallelBranch) -> None:
    bound = llm.bind_tools([get_weather], tool_choice="any")
    call = bound.invoke("What's the weather in Paris?")
    result = get_weather.invoke(call.tool_calls[0])
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(
        ["What's the weather in Paris?", call, result]
    )
    assert answer.content and not answer.tool_calls
    assert json.dumps(call.tool_calls[0]["args"])  # arguments survived the round trip as JSON
