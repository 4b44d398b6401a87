"""From role/content message dicts (plus tools) to the exact prompt text.

Both adapters convert their framework's messages to plain dicts in OpenAI's
shape first::

    {"role": "system" | "user" | "assistant" | "tool", "content": str,
     "tool_calls": [{"id": ..., "type": "function",
                     "function": {"name": ..., "arguments": {...}}}],  # assistant only
     "tool_call_id": ..., "name": ...}                                 # tool only

and then call `render_chat`, which picks the model's own way of showing
tools: its chat template when the template renders ``tools`` (Qwen2.5), or
the same Hermes-style instructions written into the system message when it
does not (SmolLM2's ChatML).
"""

from __future__ import annotations

import json
from typing import Any

from .tool_calls import fold_tool_messages, inject_system_text, template_supports_tools, tool_prompt


def render_chat(
    decoder: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    system_text: str | None = None,
) -> str:
    """Render ``messages`` (and ``tools``) with ``decoder``'s chat template, generation prompt added.

    Args:
        decoder: A `pbd_core.ParallelBranchDecoder` (its ``tokenizer`` and ``render_messages`` are used).
        messages: Message dicts as described in the module docstring.
        tools: OpenAI-format tools the model may call, or None.
        system_text: Extra instructions appended to the system message (e.g. `json_instructions`).
    """
    native = template_supports_tools(decoder.tokenizer)
    if native:
        messages = [_with_dict_arguments(m) for m in messages]
    else:
        messages = fold_tool_messages(messages)
        if tools:
            messages = inject_system_text(messages, tool_prompt(tools))
    if system_text:
        messages = inject_system_text(messages, system_text)
    messages = [{**m, "content": m.get("content") or ""} for m in messages]
    return decoder.render_messages(messages, tools=tools if native and tools else None)


def json_instructions(schema: dict[str, Any] | None) -> str:
    """System text asking for one JSON value (matching ``schema`` when given)."""
    if schema is None:
        return "Respond only with a JSON object, nothing else."
    return (
        "Respond only with a JSON object that matches this JSON schema, nothing else. "
        "Keep each string value short, one sentence at most:\n" + json.dumps(schema, ensure_ascii=False)
    )


def added_system_text(
    messages: list[dict[str, Any]],
    *,
    tools: object,
    wants_json: bool,
    schema: dict[str, Any] | None,
    options: dict[str, Any],
    model_name: str | None,
    plan_instructions: bool | None,
) -> str | None:
    """What an adapter appends to the system message: the JSON schema's instructions for a structured
    answer, nothing extra with tools (the chat template presents them), else the planning instructions
    where they apply (`pbd_integrations.prompts.planning_instructions`)."""
    from .prompts import planning_instructions

    if wants_json:
        return json_instructions(schema)
    if tools:
        return None
    return planning_instructions(messages, branches=options.get("branches"), parallel=options.get("parallel", True),
                                 model_name=model_name, requested=plan_instructions)


def _with_dict_arguments(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates expect tool-call arguments as a mapping, not a JSON string."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        function = dict(call.get("function", call))
        if isinstance(function.get("arguments"), str):
            function["arguments"] = json.loads(function["arguments"] or "{}")
        fixed.append({**call, "function": function})
    return {**message, "tool_calls": fixed}
