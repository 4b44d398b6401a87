"""Tool calls as text: rendering, parsing from a table of tricky outputs, streaming split."""

from __future__ import annotations

import itertools

import pytest

from pbd_integrations.tool_calls import (
    ParsedToolCall,
    ToolCallParseError,
    ToolCallSplitter,
    fold_tool_messages,
    inject_system_text,
    parse_tool_calls,
    render_tool_call,
    template_supports_tools,
    tool_prompt,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# (model output, expected content, expected [(name, arguments)])
PARSE_CASES = [
    ("Plain answer.", "Plain answer.", []),
    ("", "", []),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [("get_weather", {"city": "Paris"})]),
    ('Let me check. <tool_call>{"name": "f", "arguments": {}}</tool_call>', "Let me check.", [("f", {})]),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}}', "", [("f", {"a": 1})]),  # missing closing tag
    (
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": 2}}\n</tool_call>',
        "",
        [("a", {}), ("b", {"x": 2})],
    ),
    ('<tool_call>\n```json\n{"name": "f", "arguments": {"a": "b"}}\n```\n</tool_call>', "", [("f", {"a": "b"})]),
    ('```json\n{"name": "f", "arguments": {"q": "x"}}\n```', "", [("f", {"q": "x"})]),  # bare, fenced
    ('{"name": "f", "arguments": {"q": "x"}}', "", [("f", {"q": "x"})]),  # bare JSON
    ('[{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"k": 1}}]', "", [("a", {}), ("b", {"k": 1})]),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', "", [("f", {"a": 1})]),  # double-encoded
    ('<tool_call>{"type": "function", "function": {"name": "f", "arguments": {}}}</tool_call>', "", [("f", {})]),
    ('<tool_call>{"name": "f"}</tool_call>', "", [("f", {})]),  # no arguments at all
    ('{"answer": 42}', '{"answer": 42}', []),  # JSON that is not a call stays content
    ("```python\nprint(1)\n```", "```python\nprint(1)\n```", []),
    ("Use <b>bold</b> text.", "Use <b>bold</b> text.", []),
    ('Done.\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\nThen more.', "Done.\nThen more.", [("f", {})]),
]


@pytest.mark.parametrize(("text", "content", "calls"), PARSE_CASES)
def test_parse_tool_calls(text: str, content: str, calls: list) -> None:
    parsed_content, parsed = parse_tool_calls(text)
    assert parsed_content == content
    assert [(c.name, c.arguments) for c in parsed] == calls


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('<tool_call>{"name": "f", "arguments": {"a": }}</tool_call>', "not valid JSON"),
        ("<tool_call>get_weather(city='Paris')</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "arguments of tool call 'f' are not valid JSON"),
        ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', "must be a JSON object, got list"),
        ('<tool_call>{"arguments": {}}</tool_call>', '"name" string'),
        ('<tool_call>{"name": "f", "arguments": {"a": 1</tool_call>', "not valid JSON"),  # cut off
    ],
)
def test_malformed_calls_raise_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ToolCallParseError, match=fragment) as info:
        parse_tool_calls(text)
    assert info.value.raw.startswith("<tool_call>")  # the offending call is kept for the caller


def test_ids_are_unique_and_can_be_chosen() -> None:
    _, calls = parse_tool_calls(render_tool_call("a", {}) + render_tool_call("b", {}))
    assert calls[0].id != calls[1].id and all(c.id.startswith("call_") for c in calls)
    counter = itertools.count()
    _, calls = parse_tool_calls(render_tool_call("a", {}), id_factory=lambda: f"id{next(counter)}")
    assert calls == [ParsedToolCall("a", {}, "id0")]


@pytest.mark.parametrize("text", [case[0] for case in PARSE_CASES])
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streamed_split_equals_parse(text: str, piece: int) -> None:
    """Feeding the text in pieces shows the same content and finds the same calls as parsing it whole."""
    splitter = ToolCallSplitter()
    shown = "".join(splitter.feed(text[i : i + piece]) for i in range(0, len(text), piece))
    tail, calls = splitter.finish()
    content, expected = parse_tool_calls(text)
    assert shown + tail == content
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in expected]


def test_splitter_shows_plain_text_before_a_call_at_once() -> None:
    splitter = ToolCallSplitter()
    assert splitter.feed("The weather ") == "The weather"
    assert splitter.feed("is <tool") == " is"  # "<tool" may start a call: held back
    assert splitter.feed("_call>") == ""
    splitter.feed('{"name": "f", "arguments": {}}</tool_call>')
    assert splitter.finish()[1][0].name == "f"


def test_tool_prompt_lists_every_tool_and_the_call_format() -> None:
    text = tool_prompt([WEATHER, {"name": "bare", "parameters": {"type": "object", "properties": {}}}])
    assert '"name": "get_weather"' in text and '"name": "bare"' in text
    assert "<tool_call>" in text and "</tool_call>" in text


def test_rendered_call_parses_back() -> None:
    _, calls = parse_tool_calls(render_tool_call("get_weather", {"city": "Zürich"}))
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Zürich"})]


def test_fold_tool_messages_writes_calls_and_results_as_text() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "1", "name": "get_weather"},
        {"role": "tool", "content": "warm", "tool_call_id": "2", "name": "get_weather"},
    ]
    folded = fold_tool_messages(messages)
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert parse_tool_calls(folded[1]["content"])[1][0].arguments == {"city": "Paris"}
    assert folded[2]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"
    assert all(set(m) == {"role", "content"} for m in folded)


def test_inject_system_text_extends_or_adds_the_system_message() -> None:
    assert inject_system_text([{"role": "user", "content": "hi"}], "X")[0] == {"role": "system", "content": "X"}
    merged = inject_system_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "X")
    assert merged[0]["content"] == "Be brief.\n\nX" and len(merged) == 2


class _Template:
    def __init__(self, renders_tools: bool) -> None:
        self.renders_tools = renders_tools

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        names = [t["function"]["name"] for t in tools or []] if self.renders_tools else []
        return "".join(m["content"] for m in messages) + " ".join(names)


def test_template_supports_tools_renders_a_probe() -> None:
    assert template_supports_tools(_Template(True)) is True
    assert template_supports_tools(_Template(False)) is False
