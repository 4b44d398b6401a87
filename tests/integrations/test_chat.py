"""render_chat: tools go through the chat template when it renders them, else into the system message."""

from __future__ import annotations

import json

from pbd_integrations.chat import json_instructions, render_chat

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
HISTORY = [
    {"role": "user", "content": "Find it."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
    {"role": "tool", "content": "found", "tool_call_id": "1", "name": "lookup"},
]


class RecordingDecoder:
    """Renders messages as JSON so the test can read exactly what the template received."""

    def __init__(self, native_tools: bool) -> None:
        self.native_tools = native_tools
        self.tokenizer = self

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        return json.dumps({"messages": messages, "tools": tools if self.native_tools else None})

    def render_messages(self, messages, *, tools=None, add_generation_prompt=True):
        return self.apply_chat_template(messages, tools=tools)


def test_native_template_gets_tools_and_structured_history() -> None:
    rendered = json.loads(render_chat(RecordingDecoder(native_tools=True), HISTORY, tools=[TOOL]))
    assert rendered["tools"] == [TOOL]
    assert [m["role"] for m in rendered["messages"]] == ["user", "assistant", "tool"]
    # Templates iterate over arguments as a mapping; JSON strings are decoded first.
    assert rendered["messages"][1]["tool_calls"][0]["function"]["arguments"] == {}
    assert rendered["messages"][1]["content"] == ""


def test_plain_template_gets_instructions_and_folded_history() -> None:
    rendered = json.loads(render_chat(RecordingDecoder(native_tools=False), HISTORY, tools=[TOOL]))
    assert rendered["tools"] is None
    roles = [m["role"] for m in rendered["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert '"name": "lookup"' in rendered["messages"][0]["content"]
    assert rendered["messages"][2]["content"].startswith("<tool_call>")
    assert rendered["messages"][3]["content"] == "<tool_response>\nfound\n</tool_response>"


def test_system_text_is_appended_to_the_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Joke?"}]
    rendered = json.loads(render_chat(RecordingDecoder(native_tools=False), messages, system_text=json_instructions({"type": "object"})))
    system = rendered["messages"][0]["content"]
    assert system.startswith("Be brief.\n\nRespond only with a JSON object") and '{"type": "object"}' in system
