"""Pure conversions: LlamaIndex messages to engine dicts, engine events to chat chunks, tool blocks to selections."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from pbd_core import RawPrompt

from pbd_integrations.llama_index.convert import (
    ResponseStream,
    to_engine_messages,
    tool_selections,
)


@pytest.fixture
def chunks(make_decoder):
    """Replay ``answer`` through a fake decoder into `ResponseStream` chunks."""

    def run(answer, *, tools: bool = False) -> list[ChatResponse]:
        decoder = make_decoder(answers=[answer])
        stream = ResponseStream(model_name="m", tools=tools)
        return [c for e in decoder.stream(RawPrompt("p q r")) for c in stream.feed(e)]

    return run


# ---------------------------------------------------------------- messages


def test_roles_and_text_become_engine_dicts():
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.DEVELOPER, content="Use French."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="Hi"), TextBlock(text="there")]),
        ChatMessage(role=MessageRole.ASSISTANT, content="Bonjour"),
    ]
    assert to_engine_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Bonjour"},
    ]


def test_tool_call_blocks_and_tool_results_keep_their_ids():
    call = ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs={"a": 1, "b": 2})
    string_args = ToolCallBlock(tool_call_id=None, tool_name="neg", tool_kwargs='{"x": 3}')
    messages = [
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[call, string_args]),
        ChatMessage(role=MessageRole.TOOL, content="3", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    assistant, tool = to_engine_messages(messages)
    assert assistant == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}, "id": "call_1"},
            {"type": "function", "function": {"name": "neg", "arguments": {"x": 3}}},
        ],
    }
    assert tool == {"role": "tool", "content": "3", "tool_call_id": "call_1"}


def test_legacy_openai_tool_calls_in_additional_kwargs_are_read():
    call = {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    message = ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [call]})
    assert to_engine_messages([message])[0]["tool_calls"] == [call]


def test_thinking_blocks_from_other_llms_are_left_out():
    message = ChatMessage(
        role=MessageRole.ASSISTANT, blocks=[ThinkingBlock(content="hmm"), TextBlock(text="Paris.")]
    )
    assert to_engine_messages([message]) == [{"role": "assistant", "content": "Paris."}]


def test_non_text_block_is_a_clear_error():
    message = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://127.0.0.1/cat.png")])
    with pytest.raises(ValueError, match="text only.*ImageBlock"):
        to_engine_messages([message])


# ---------------------------------------------------------------- response stream


def test_deltas_add_up_to_the_final_content_and_only_the_final_chunk_has_raw(chunks):
    chunks = chunks("The answer is 42.")
    assert "".join(c.delta for c in chunks) == "The answer is 42."
    assert [c.message.content for c in chunks[:2]] == ["The", "The answer"]
    assert chunks[-1].message.content == "The answer is 42."
    assert all(c.raw is None for c in chunks[:-1])
    assert chunks[-1].raw["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chunks[-1].raw["model_name"] == "m"
    assert chunks[-1].raw["finish_reason"] == "eos"


def test_parallel_branches_stream_in_reading_order(chunks):
    answer = ("Plan:", [("Cats", " purr and nap"), ("Dogs", " bark")], " Both are pets.")
    chunks = chunks(answer)
    text = "Plan:\n\n**Cats**\n\npurr and nap\n\n**Dogs**\n\nbark\n\nBoth are pets."
    assert "".join(c.delta for c in chunks) == text
    assert chunks[-1].message.content == text
    raw = chunks[-1].raw
    assert raw["raw_text"] == "Plan:####Cats: purr and nap####Dogs: bark####%%%% Both are pets."
    assert raw["parallel"] is True
    assert [(b["title"], b["text"]) for b in raw["branches"]] == [("Cats", " purr and nap"), ("Dogs", " bark")]
    assert raw["stats"]["forward_passes"] > 0


def test_tool_call_is_not_shown_as_content_and_ends_as_a_block(chunks):
    answer = 'Let me add. <tool_call> {"name": "add", "arguments": {"a": 1, "b": 2}} </tool_call>'
    chunks = chunks(answer, tools=True)
    assert all("<tool" not in c.delta for c in chunks)
    final = chunks[-1].message
    assert final.content == "Let me add."
    (block,) = [b for b in final.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("add", {"a": 1, "b": 2})
    assert block.tool_call_id.startswith("call_")
    assert "".join(c.delta for c in chunks) == "Let me add."
    # Also where LlamaIndex's streaming structured output looks for calls, in OpenAI's shape.
    assert final.additional_kwargs["tool_calls"] == [
        {"id": block.tool_call_id, "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    ]


def test_without_tools_a_tool_call_is_plain_text(chunks):
    answer = '<tool_call> {"name": "add", "arguments": {}} </tool_call>'
    final = chunks(answer, tools=False)[-1].message
    assert final.content == answer
    assert not [b for b in final.blocks if isinstance(b, ToolCallBlock)]


def test_unreadable_tool_call_stays_as_text_with_a_warning(chunks):
    answer = '<tool_call> {"name": "add", "arguments": {"a": 1,, } </tool_call>'
    with pytest.warns(UserWarning, match="cannot be read"):
        chunks = chunks(answer, tools=True)
    assert chunks[-1].message.content == answer
    assert "".join(c.delta for c in chunks) == answer


# ---------------------------------------------------------------- tool selections


def _response(*blocks) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=list(blocks)))


def test_tool_selections_from_blocks():
    response = _response(
        TextBlock(text="calling"),
        ToolCallBlock(tool_call_id="call_a", tool_name="add", tool_kwargs={"a": 1}),
        ToolCallBlock(tool_name="neg", tool_kwargs='{"x": 2}'),
    )
    selections = tool_selections(response)
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in selections] == [
        ("call_a", "add", {"a": 1}),
        ("neg", "neg", {"x": 2}),
    ]


def test_no_tool_call_raises_only_when_asked():
    response = _response(TextBlock(text="I know the answer."))
    assert tool_selections(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected at least one tool call.*I know the answer"):
        tool_selections(response)
