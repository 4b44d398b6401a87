"""A budget cut is surfaced, not raised: ``raw["finish_reason"] == "length"``.

Under a grammar the engine completes the JSON when the budget runs out, so a
cut tool call still parses; without one (an engine that passes no budget) the
cut text is kept as content without a warning, and the reason is in ``raw``.
"""

from __future__ import annotations

import warnings

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.tools import FunctionTool

from pbd_core import DecodeResult, DecodeStats, FinalEvent, TokenEvent
from pbd_integrations.llama_index.convert import ResponseStream, tool_selections


def replay(pieces: list[str], finish: str):
    stream = ResponseStream(model_name="m", tools=True)
    chunks = []
    for piece in pieces:
        chunks += stream.feed(TokenEvent(piece, None, "merge", 1))
    result = DecodeResult("".join(pieces), [], DecodeStats(prompt_tokens=3, generated_tokens=len(pieces)), finish)
    return chunks + stream.feed(FinalEvent(result))


def test_a_completed_call_cut_by_the_budget_is_a_call_and_raw_says_length() -> None:
    final = replay(["<tool_call>", '\n{"name": "add", "arguments": {"a": 1, "b": 0}}', "\n</tool_call>"], "length")[-1]
    (block,) = [b for b in final.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("add", {"a": 1, "b": 0})
    assert final.raw["finish_reason"] == "length"


def test_a_call_cut_off_is_kept_as_text_without_a_warning() -> None:
    pieces = ["<tool_call>", '\n{"name": "add", "arguments": {"a": 1']
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        final = replay(pieces, "length")[-1]
    assert final.message.content == "".join(pieces)
    assert final.raw["finish_reason"] == "length"
    with pytest.raises(ValueError, match="cut by the token budget"):
        tool_selections(final)


@pytest.mark.slow
def test_a_forced_tool_call_at_a_tiny_budget_is_a_whole_call(llm) -> None:
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    tool = FunctionTool.from_defaults(fn=get_weather)
    message = ChatMessage(role=MessageRole.USER, content="What is the weather in the capital of France?")
    response = llm.chat_with_tools([tool], chat_history=[message], tool_required=True, max_tokens=30)
    assert response.raw["finish_reason"] == "length"
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "get_weather" and isinstance(selection.tool_kwargs["city"], str)
