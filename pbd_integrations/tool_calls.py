"""Tool calls as text: render tool definitions into a prompt, parse calls back.

The wire format is Hermes/Qwen's, which Qwen2.5's own chat template uses::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

For chat templates that understand ``tools`` (Qwen2.5, Llama 3.1, ...) the
adapters pass the tools to the template; for templates that ignore them
(SmolLM2's plain ChatML) `tool_prompt` writes the same instructions into the
system message, and `fold_tool_messages` turns assistant tool calls and tool
results into plain text the template can render.

`parse_tool_calls` is written on top of `ToolCallSplitter`, the streaming
version, so streamed content and parsed content are the same text by
construction. Parsing tolerates what small models write: code fences, a
missing closing tag, several calls, a JSON list, bare JSON without tags,
arguments encoded as a JSON string. Arguments that are not valid JSON raise
`ToolCallParseError`.
"""

from __future__ import annotations

import json
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE_START = "<tool_response>"
TOOL_RESPONSE_END = "</tool_response>"

_FENCE = "```"
_BARE_STARTS = ("{", "[", _FENCE)


class ToolCallParseError(ValueError):
    """A tool call was opened but its JSON (name or arguments) could not be read.

    Attributes:
        raw: The text of the offending call, as the model wrote it.
    """

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class ParsedToolCall:
    """One tool call read from model output."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: new_tool_call_id())


def new_tool_call_id() -> str:
    """A fresh call id in OpenAI's style (``call_`` + 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------- rendering


def tool_prompt(tools: list[dict[str, Any]]) -> str:
    """System-prompt text describing ``tools`` (OpenAI format) and how to call them.

    Used for chat templates that ignore the ``tools`` argument. The wording
    follows Qwen2.5's template so that one parser reads both, except that the
    call example uses concrete JSON instead of ``<function-name>`` placeholders,
    which SmolLM2-135M copied verbatim (``"customer_name": "<string>"``).
    """
    lines = [
        "# Tools",
        "",
        "You may call one or more functions to assist with the user query.",
        "",
        "You are provided with function signatures within <tools></tools> XML tags:",
        "<tools>",
    ]
    lines += [json.dumps(_as_openai_tool(tool), ensure_ascii=False) for tool in tools]
    lines += [
        "</tools>",
        "",
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:",
        "<tool_call>",
        '{"name": "function_name", "arguments": {"argument_name": "value from the user\'s request"}}',
        "</tool_call>",
    ]
    return "\n".join(lines)


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One call in the wire format, as the model is asked to write it."""
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_START}\n{payload}\n{TOOL_CALL_END}"


def render_tool_result(content: str) -> str:
    """A tool's result as text, for templates without a ``tool`` role."""
    return f"{TOOL_RESPONSE_START}\n{content}\n{TOOL_RESPONSE_END}"


_support_cache: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "pbd_probe_tool_7f3a",
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template renders the ``tools`` it is given.

    Decided by rendering a probe tool and looking for its name, which is
    exact where grepping the template source for ``tools`` is not.
    """
    try:
        return _support_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            tools=[_PROBE_TOOL],
            tokenize=False,
            add_generation_prompt=True,
        )
        supported = "pbd_probe_tool_7f3a" in str(text)
    except Exception:  # a template that cannot render tools at all does not support them
        supported = False
    try:
        _support_cache[tokenizer] = supported
    except TypeError:
        pass
    return supported


def fold_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite tool traffic as plain ``user``/``assistant`` text.

    For templates without tool support: an assistant message's ``tool_calls``
    are appended to its content in the wire format, and each ``tool`` message
    becomes a user message wrapped in ``<tool_response>`` tags (consecutive
    results are joined into one message, as Qwen2.5's template does).
    """
    folded: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = [_call_name_args(call) for call in message["tool_calls"]]
            parts = [message.get("content") or ""] + [render_tool_call(n, a) for n, a in calls]
            folded.append({"role": "assistant", "content": "\n".join(p for p in parts if p)})
        elif role == "tool":
            text = render_tool_result(str(message.get("content", "")))
            if folded and folded[-1].get("_tool_results"):
                folded[-1]["content"] += "\n" + text
            else:
                folded.append({"role": "user", "content": text, "_tool_results": True})
        else:
            folded.append({k: v for k, v in message.items() if k in ("role", "content")})
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in folded]


def inject_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Append ``text`` to the system message, or add one at the start."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content') or ''}\n\n{text}".strip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _as_openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") == "function" and "function" in tool:
        return tool
    return {"type": "function", "function": tool}


def _call_name_args(call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    function = call.get("function", call)
    arguments = function.get("arguments", function.get("args", {}))
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    return function["name"], arguments


# --------------------------------------------------------------------------- parsing


def parse_tool_calls(
    text: str, *, id_factory: Callable[[], str] = new_tool_call_id
) -> tuple[str, list[ParsedToolCall]]:
    """Split model output into content and tool calls.

    Returns:
        ``(content, calls)``: the text outside the calls (whitespace next to a
        call dropped) and the calls in order.

    Raises:
        ToolCallParseError: a ``<tool_call>`` whose JSON cannot be read.
    """
    splitter = ToolCallSplitter(id_factory=id_factory)
    head = splitter.feed(text)
    tail, calls = splitter.finish()
    return head + tail, calls


class ToolCallSplitter:
    """Streaming split of model output into content and tool calls.

    `feed` returns the content that is certainly not part of a call and can be
    shown at once; from the first possible call on (a ``<tool_call>`` tag, or
    ``{``, ``[`` or a code fence at the very start, which may be bare JSON)
    text is held back, and `finish` parses it.

    >>> s = ToolCallSplitter()
    >>> s.feed("Let me check. <tool_") + s.feed('call>{"name": "f", "arguments": {}}')
    'Let me check.'
    >>> s.finish()[1][0].name
    'f'
    """

    def __init__(self, *, id_factory: Callable[[], str] = new_tool_call_id) -> None:
        self._id_factory = id_factory
        self._buffer = ""  # text not yet returned
        self._holding = False  # a possible call started: keep everything until finish
        self._shown_text = False  # some non-space content was already returned
        self.held = ""
        """What `finish` had to parse (the text not returned by `feed`)."""

    def feed(self, chunk: str) -> str:
        """Add model text; return the part that can be shown as content now."""
        self._buffer += chunk
        if self._holding:
            return ""
        start = self._buffer.find(TOOL_CALL_START)
        if start >= 0:
            shown, self._buffer = self._buffer[:start].rstrip(), self._buffer[start:]
            self._holding = True
            return self._show(shown)
        if not self._shown_text:
            lead = self._buffer.lstrip()
            if lead.startswith(_BARE_STARTS):
                self._holding = True
                return ""
            if not lead or _FENCE.startswith(lead):
                return ""  # too early to tell
        # Keep back a suffix that may grow into "<tool_call>" and trailing space
        # (space right before a call is dropped).
        keep = _partial_suffix(self._buffer, TOOL_CALL_START)
        safe = self._buffer[: len(self._buffer) - keep]
        shown = safe.rstrip()
        self._buffer = self._buffer[len(shown) :]
        return self._show(shown)

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """Parse what was held back: ``(remaining content, calls)``.

        Raises:
            ToolCallParseError: a call cannot be read; `held` then still has the text.
        """
        text, self._buffer = self._buffer, ""
        self.held = text
        if not self._holding:
            return text, []
        pieces: list[str] = []
        calls: list[ParsedToolCall] = []
        position = 0
        if not self._shown_text:
            bare = _parse_bare_calls(text)
            if bare is not None:
                found, position = bare
                calls += [self._make(name, args) for name, args in found]
        while True:
            start = text.find(TOOL_CALL_START, position)
            if start < 0:
                pieces.append(text[position:])
                break
            pieces.append(text[position:start])
            found, position = _parse_tagged_call(text, start)
            calls += [self._make(name, args) for name, args in found]
        if not calls:
            return text, []
        content = "".join(p for p in pieces if p.strip())
        return content.strip() if not self._shown_text else content.rstrip(), calls

    def _show(self, text: str) -> str:
        if text.strip():
            self._shown_text = True
        return text

    def _make(self, name: str, arguments: dict[str, Any]) -> ParsedToolCall:
        return ParsedToolCall(name=name, arguments=arguments, id=self._id_factory())


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _skip_fence_open(text: str, position: int) -> int:
    """Skip whitespace and an optional opening code fence (```json) at ``position``."""
    position = _skip_space(text, position)
    if text.startswith(_FENCE, position):
        end = text.find("\n", position)
        position = len(text) if end < 0 else end + 1
    return _skip_space(text, position)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _parse_tagged_call(text: str, start: int) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Read the call opened by the tag at ``start``; return the calls and the position after it."""
    body_start = _skip_fence_open(text, start + len(TOOL_CALL_START))
    end_tag = text.find(TOOL_CALL_END, body_start)
    raw = text[start : end_tag + len(TOOL_CALL_END)] if end_tag >= 0 else text[start:]
    try:
        value, body_end = json.JSONDecoder().raw_decode(text, body_start)
    except json.JSONDecodeError as e:
        msg = f"tool call is not valid JSON ({e.msg} at char {e.pos - body_start}): {raw!r}"
        raise ToolCallParseError(msg, raw) from e
    calls = [_name_and_arguments(item, raw) for item in (value if isinstance(value, list) else [value])]
    position = _skip_space(text, body_end)
    if text.startswith(_FENCE, position):
        position = _skip_space(text, position + len(_FENCE))
    if text.startswith(TOOL_CALL_END, position):
        position += len(TOOL_CALL_END)
    return calls, position


def _parse_bare_calls(text: str) -> tuple[list[tuple[str, dict[str, Any]]], int] | None:
    """Calls written as bare JSON (optionally fenced) at the start of ``text``, or None."""
    body_start = _skip_fence_open(text, 0)
    try:
        value, end = json.JSONDecoder().raw_decode(text, body_start)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(_looks_like_call(item) for item in items):
        return None
    raw = text[body_start:end]
    calls = [_name_and_arguments(item, raw) for item in items]
    position = _skip_space(text, end)
    if text.startswith(_FENCE, position):
        position += len(_FENCE)
    return calls, position


def _looks_like_call(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    item = item.get("function", item) if isinstance(item.get("function"), dict) else item
    return isinstance(item.get("name"), str) and set(item) <= {"name", "arguments", "parameters", "type", "id"}


def _name_and_arguments(item: Any, raw: str) -> tuple[str, dict[str, Any]]:
    """Validate one call object: ``{"name": str, "arguments": object}`` (``parameters`` also accepted)."""
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        msg = f'tool call must be a JSON object with a "name" string: {raw!r}'
        raise ToolCallParseError(msg, raw)
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            msg = f"arguments of tool call {item['name']!r} are not valid JSON ({e.msg}): {raw!r}"
            raise ToolCallParseError(msg, raw) from e
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        msg = f"arguments of tool call {item['name']!r} must be a JSON object, got {type(arguments).__name__}: {raw!r}"
        raise ToolCallParseError(msg, raw)
    return item["name"], arguments
