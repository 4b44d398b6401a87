"""Parallel tool calls for the adapters: the grammars and call format of a `pbd_core.tool_plan.ToolCallPlan`.

When tools are bound with a call required (``tool_choice="any"``/``"required"``
or a tool's name) and parallel tool calls are not turned off, the adapters pass
``tool_calls=tool_call_plan(...)`` to the engine. The model first lists the
calls under a grammar, as a Python list with the arguments that tell the
calls apart, usually one (`list_grammar`)::

    [get_weather(city="Paris"), get_weather(city="London"), get_weather(city="Tokyo")]

A coder or chat model writes this the way it writes code, and it closes the
list (``]``) where it would stop calling tools: a list in the branch format
(``####<title>:``, ``####%%%%``), tried first, was not closed by
Qwen2.5-Coder-0.5B, which kept inventing cities. Each entry becomes a title
(``get_weather: city="Paris"``); then every call's arguments are decoded at
once, one branch per call, each under its own tool's schema
(`pbd_integrations.grammar.json_schema_constraint`). The answer's text is the
calls in Qwen2.5's (Hermes) format, one per line::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "London"}}
    </tool_call>

which is what `pbd_integrations.tool_calls` parses and what Qwen2.5's chat
template writes for an assistant message with these calls, so the next turn
sees its own format. One listed call is decoded exactly as before (one call
under `pbd_integrations.grammar.tool_call_constraint`); ``parallel=False``
writes the calls one after another under the same grammar with ``max_calls``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable
from typing import Any

from pbd_core.plan_format import TITLE_COLON
from pbd_core.tool_plan import ToolCallPlan

from .grammar import STRING_REPETITION, _factory, json_schema_constraint, tool_call_constraint
from .penalties import DryPenalty, with_repetition_penalty
from .tool_calls import TOOL_CALL_END, TOOL_CALL_START

MAX_HINT_CHARS = 48
"""Longest value in the list of calls (``"Paris"``, ``"order 1234"``)."""

PREAMBLE = ""
"""What the engine writes before the list of calls (nothing: the list's grammar starts it)."""


CALL_LEAD = f'{TOOL_CALL_START}\n{{"name": "'
"""A call in the wire format up to its tool's name: where the model names its first call's tool."""


def call_text(name: str) -> tuple[str, str]:
    """The text around one call's arguments, as `pbd_integrations.tool_calls.render_tool_call` writes a call."""
    return f'{TOOL_CALL_START}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ', f"}}\n{TOOL_CALL_END}"


def list_grammar(functions: list[dict[str, Any]], max_calls: int = 16, *, first: str | None = None) -> str:
    """Lark grammar of the list of calls: ``[get_weather(city="Paris"), get_weather(city="London")]``.

    Each call names a tool and the arguments that tell this call from the others
    (the model picks them: one, ``city="Paris"``, or more, ``a=2, b=3``); a tool
    without arguments is ``tool()``.
    A string argument's value is quoted, a number is a number (``17``), a boolean
    ``true`` or ``false``, anything else one word. A value holds no comma (one
    value per argument, not a list of them),
    no line break and no ``:`` or ``#`` (a title cannot). At most ``max_calls``.

    ``first``: the list's start, ``[<first>(``, is already written (`list_start`);
    the grammar is then that of the rest.
    """
    def arguments(function: dict[str, Any]) -> str:
        properties = (function.get("parameters") or {}).get("properties") or {}
        keys = [f'{json.dumps(key + "=", ensure_ascii=False)} {_value(properties.get(key))}' for key in _argument_names(function)]
        if not keys:
            return '")"'
        one = f'({" | ".join(keys)})'
        return f'{one} (", " {one}){{0,{len(keys) - 1}}} ")"' if len(keys) > 1 else f'{one} ")"'

    calls = [f'{json.dumps(f["name"] + "(", ensure_ascii=False)} {arguments(f)}' for f in functions]
    more = f'(", " call){{0,{max(0, max_calls - 1)}}} "]"'
    if first is None:
        start = f'start: "[" call {more}'
    else:
        start = f"start: {arguments(next(f for f in functions if f['name'] == first))} {more}"
    banned = f":#{TITLE_COLON},"
    return (
        f"{start}\n"
        f"call: {' | '.join(calls)}\n"
        f'STRING: /"[^"\\\\\\n{banned}]{{1,{MAX_HINT_CHARS}}}"/\n'
        f"WORD: /[-+.0-9A-Za-z_]{{1,{MAX_HINT_CHARS}}}/\n"
        "INTEGER: /-?[0-9]{1,24}/\n"
        "NUMBER: /-?[0-9]{1,24}(\\.[0-9]{1,12})?/\n"
        'BOOLEAN: "true" | "false" | "True" | "False"\n'
    )


def list_start(name: str) -> str:
    """The start of a list whose first call is to ``name`` (the model named it in its own format)."""
    return f"[{name}("


def name_grammar(names: list[str] | tuple[str, ...]) -> str:
    """Lark grammar of a tool's name, as the model writes it after ``{"name": "`` (a closing quote
    when one name is the start of another, so that the name's end is known)."""
    prefix_free = not any(a != b and b.startswith(a) for a in names for b in names)
    close = "" if prefix_free else " " + json.dumps('"')
    return f"start: ({_alternatives(list(names))}){close}\n"


def read_list(names: tuple[str, ...], text: str) -> list[str]:
    """Titles of the calls in a list the model wrote, in order (complete entries only).

    >>> read_list(("get_weather",), '[get_weather(city="Paris"), get_weather(city="Lon')
    ['get_weather: city="Paris"']
    """
    pattern = re.compile(
        "(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r')\(((?:[^()"]|"[^"]*")*)\)'
    )
    titles = []
    for match in pattern.finditer(text):
        name, hint = match.group(1), match.group(2).strip()
        titles.append(f"{name}: {hint}" if hint else name)
    return titles


def _alternatives(names: list[str]) -> str:
    return " | ".join(json.dumps(name, ensure_ascii=False) for name in names)


def _value(schema: Any) -> str:
    """The terminal of an argument's value in the list, by the argument's JSON type."""
    if _is_string(schema):
        return "STRING"
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "integer":
        return "INTEGER"
    if kind == "number":
        return "NUMBER"
    return "BOOLEAN" if kind == "boolean" else "WORD"


def _is_string(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return True
    kind = schema.get("type")
    if kind is None:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        return any(_is_string(o) for o in options) if options else "enum" not in schema
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _argument_names(function: dict[str, Any]) -> list[str]:
    """The tool's argument names, required ones first."""
    parameters = function.get("parameters") or {}
    names = list(parameters.get("properties") or {})
    required = [n for n in parameters.get("required") or [] if n in names]
    return required + [n for n in names if n not in required]


def _lark_constraint(tokenizer: Any, lark: str) -> Callable[[], Any]:
    import llguidance

    return _factory(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), lark=lark, string_repetition=None)


def tool_call_plan(
    tokenizer: Any,
    tools: list[dict[str, Any]],
    tool_choice: str | None = "required",
    *,
    max_calls: int = 16,
    string_repetition: DryPenalty | None = STRING_REPETITION,
) -> ToolCallPlan:
    """The plan of an answer that calls one or more of ``tools`` (OpenAI format).

    Args:
        tool_choice: ``"required"``/``"any"``: calls to any of the tools; a tool's name: calls to it.
        max_calls: Most calls written one after another with ``parallel=False`` (the plan itself
            is bounded by ``max_branches``).
        string_repetition: Loop control inside the arguments' strings (`pbd_integrations.grammar`).
    """
    functions = [tool.get("function", tool) for tool in tools]
    if tool_choice in ("required", "any", None):
        chosen = functions
    else:
        chosen = [f for f in functions if f["name"] == tool_choice]
        if not chosen:
            raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {[f['name'] for f in functions]}")
    names = tuple(f["name"] for f in chosen)
    arguments = {
        f["name"]: json_schema_constraint(
            tokenizer, f.get("parameters") or {"type": "object", "properties": {}}, string_repetition=string_repetition
        )
        for f in chosen
    }
    sequential = tool_call_constraint(
        tokenizer, tools, "required" if tool_choice in ("any", None) else tool_choice,
        string_repetition=string_repetition, max_calls=max_calls,
    )
    return ToolCallPlan(
        tools=names,
        listing=_lark_constraint(tokenizer, list_grammar(chosen, max_calls)),
        read_list=functools.partial(read_list, names),
        arguments=arguments,
        call_text=call_text,
        separator="\n",
        sequential=sequential,
        preamble=PREAMBLE,
        lead=CALL_LEAD,
        lead_name=_lark_constraint(tokenizer, name_grammar(names)) if len(names) > 1 else None,
        listing_after=functools.partial(_listing_after, tokenizer, tuple(json.dumps(f) for f in chosen), max_calls),
    )


@functools.lru_cache(maxsize=64)
def _listing_after(tokenizer: Any, functions: tuple[str, ...], max_calls: int, name: str) -> tuple[str, Callable[[], Any]]:
    """The start of the list for a first call to ``name`` and the constraint of the rest (compiled once)."""
    grammar = list_grammar([json.loads(f) for f in functions], max_calls, first=name)
    return list_start(name), _lark_constraint(tokenizer, grammar)


@functools.lru_cache(maxsize=32)
def cached_tool_call_plan(tokenizer: Any, tools_json: str, tool_choice: str, max_calls: int = 16) -> ToolCallPlan:
    """`tool_call_plan` compiled once per tokenizer, tools (as JSON) and choice (compiling takes up to a second)."""
    return tool_call_plan(tokenizer, json.loads(tools_json), tool_choice, max_calls=max_calls)


def with_penalty(plan: ToolCallPlan, penalty: float, exempt: Callable[[int], bool] | None = None) -> ToolCallPlan:
    """``plan`` with ``repetition_penalty`` on every call's arguments (unchanged at 1.0)."""
    if penalty == 1.0:
        return plan
    return dataclasses.replace(
        plan,
        arguments={name: with_repetition_penalty(penalty, f, exempt=exempt) for name, f in plan.arguments.items()},
        sequential=with_repetition_penalty(penalty, plan.sequential, exempt=exempt),
    )


def wants_plan(tool_choice: str, parallel_tool_calls: bool | None, *, response_schema: Any = None) -> bool:
    """Whether a request decodes its calls as a plan: a call is required and parallel calls are not off."""
    return tool_choice not in ("auto", "none") and parallel_tool_calls is not False and response_schema is None
