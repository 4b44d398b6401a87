"""Pure conversions between LlamaIndex types and the engine's.

Nothing here loads a model: messages become the engine's role/content dicts,
engine events become cumulative `ChatResponse` chunks, and tool-call blocks
become `ToolSelection`s. The adapter class in `base.py` only wires these to
the decoder, so the sync and async paths share every line of conversion.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from pbd_core import DecodeResult, FinalEvent, ReadableText, ReadingOrder, StreamEvent
from pbd_core.readable import text_order

from ..tool_calls import ParsedToolCall, ToolCallParseError, ToolCallSplitter

_ROLE_NAMES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as the engine's ``{"role", "content"}`` dicts.

    Assistant tool calls (`ToolCallBlock`s) become OpenAI-style ``tool_calls``
    with the arguments as a dict, which is what transformers chat templates
    read; a tool result keeps its ``tool_call_id``. Thinking blocks and cache
    hints (from other LLMs in a shared history) are left out. Only text can be
    decoded: an image, audio or document block raises `ValueError`.
    """
    converted = []
    for message in messages:
        role = _ROLE_NAMES.get(message.role)
        if role is None:
            msg = f"unsupported message role {message.role!r}"
            raise ValueError(msg)
        texts, calls = [], []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):
                calls.append(_tool_call_dict(block))
            elif isinstance(block, (ThinkingBlock, CachePoint)):
                continue  # another LLM's reasoning trace or cache hint: not conversation text
            else:
                msg = (
                    f"ParallelBranchLLM decodes text only; got a {type(block).__name__} "
                    f"in a {role} message"
                )
                raise ValueError(msg)
        if not calls:  # messages from LLMs that keep tool calls only in OpenAI's legacy place
            calls = [c for c in message.additional_kwargs.get("tool_calls") or [] if isinstance(c, dict)]
        entry: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
        if calls:
            entry["tool_calls"] = calls
        if role == "tool" and message.additional_kwargs.get("tool_call_id"):
            entry["tool_call_id"] = message.additional_kwargs["tool_call_id"]
        converted.append(entry)
    return converted


def _tool_call_dict(block: ToolCallBlock) -> dict[str, Any]:
    arguments = block.tool_kwargs
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    call: dict[str, Any] = {"type": "function", "function": {"name": block.tool_name, "arguments": arguments}}
    if block.tool_call_id:
        call["id"] = block.tool_call_id
    return call


def result_raw(result: DecodeResult, model_name: str) -> dict[str, Any]:
    """What a final `ChatResponse.raw` holds: usage (read by LlamaIndex's token counter) and the decode's stats.

    ``completion_tokens`` counts the tokens of the answer's text in reading
    order, format text the engine wrote itself (titles, markers) included;
    ``stats["generated_tokens"]`` counts what the model sampled (an
    end-of-sequence token too, forced format text not).
    """
    prompt_tokens = result.stats.prompt_tokens
    completion_tokens = len(result.token_ids)
    return {
        "model_name": model_name,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "parallel": result.parallel,
        "raw_text": result.raw_text,
        "branches": [
            {"title": b.title, "text": b.text, "finish_reason": b.finish_reason, "block": b.block}
            for b in result.branches
        ],
        "stats": result.stats.as_dict(),
    }


@dataclass
class ResponseStream:
    """Turns engine events into cumulative `ChatResponse` chunks.

    Text is released in reading order, so the deltas of all chunks add up to
    the final message's content: readable (`pbd_core.ReadableText`: each step
    under its title, no format markers) unless ``output_format="raw"``
    (`pbd_core.ReadingOrder`: the branch-format text, which ``raw["raw_text"]``
    always has). With ``tools`` the
    text goes through `ToolCallSplitter`: a tool call is never shown as
    content, and the final chunk carries the calls as `ToolCallBlock`s. A
    call whose JSON cannot be read stays in the content as the model wrote it
    (with a warning, unless the budget cut it: ``raw["finish_reason"]`` is then
    ``"length"``), so an agent sees the text instead of crashing. Only the
    final chunk has ``raw`` (usage, finish reason and stats).
    """

    model_name: str
    tools: bool = False
    output_format: str = "readable"
    _order: ReadableText | ReadingOrder = field(init=False, repr=False)
    _splitter: ToolCallSplitter = field(default_factory=ToolCallSplitter)
    _content: str = ""
    _text: str = ""  # everything in reading order, tool calls included

    def __post_init__(self) -> None:
        self._order = text_order(self.output_format)

    def feed(self, event: StreamEvent) -> list[ChatResponse]:
        """Chunks for one event: none, one with new text, or the final one."""
        text = "".join(self._order.feed(event))
        self._text += text
        if self.tools:
            text = self._splitter.feed(text)
        if isinstance(event, FinalEvent):
            return [self._final(text, event.result)]
        if not text:
            return []
        self._content += text
        return [ChatResponse(message=_assistant(self._content), delta=text)]

    def _final(self, text: str, result: DecodeResult) -> ChatResponse:
        calls: list[ParsedToolCall] = []
        if self.tools:
            try:
                tail, calls = self._splitter.finish()
                text += tail
            except ToolCallParseError as e:
                if result.finish_reason != "length":  # a cut answer is reported by raw["finish_reason"]
                    warnings.warn(f"the model wrote a tool call that cannot be read; kept as text: {e}", stacklevel=2)
                text = self._text[len(self._content) :]  # shown content is a prefix of the text
        self._content += text
        return ChatResponse(
            message=_assistant(self._content, calls),
            delta=text,
            raw=result_raw(result, self.model_name),
        )


def _assistant(content: str, calls: Iterable[ParsedToolCall] = ()) -> ChatMessage:
    """An assistant message; tool calls as `ToolCallBlock`s and, for LlamaIndex code that
    still reads them there (streaming structured output), in OpenAI's shape in ``additional_kwargs``."""
    calls = list(calls)
    blocks: list[Any] = [TextBlock(text=content)]
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls]
    extra = {"tool_calls": [_openai_call(c) for c in calls]} if calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def _openai_call(call: ParsedToolCall) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def tool_selections(response: ChatResponse, error_on_no_tool_call: bool = True) -> list[ToolSelection]:
    """The `ToolCallBlock`s of ``response.message`` as `ToolSelection`s.

    Raises:
        ValueError: no tool call while ``error_on_no_tool_call`` is set.
    """
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    if not blocks and error_on_no_tool_call:
        content = response.message.content or ""
        msg = f"expected at least one tool call, but the model answered with text: {content[:200]!r}"
        if (response.raw or {}).get("finish_reason") == "length":
            msg += " (the answer was cut by the token budget: raise max_tokens)"
        raise ValueError(msg)
    return [
        ToolSelection(
            tool_id=b.tool_call_id or b.tool_name,
            tool_name=b.tool_name,
            tool_kwargs=b.tool_kwargs if isinstance(b.tool_kwargs, dict) else json.loads(b.tool_kwargs or "{}"),
        )
        for b in blocks
    ]
