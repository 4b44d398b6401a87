"""Grammar-constrained decoding (JSON schemas, tool calls) with llguidance.

Each factory returned here makes a fresh `pbd_core.TokenConstraint` per
call; the engine makes one per stream (the main stream and every branch), so
constraints compose with parallel decoding. The llguidance tokenizer is
built once per Hugging Face tokenizer (about a second) and cached.

Two choices make small models reliable under a grammar:

- JSON is written compactly (no free whitespace), so a model cannot wander
  into endless newlines inside an object;
- objects that list ``properties`` and say nothing about
  ``additionalProperties`` are closed (no extra keys). Tool arguments and
  structured outputs are parsed into those properties anyway.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from typing import Any, Callable

import torch

from .tool_calls import TOOL_CALL_END, TOOL_CALL_START

_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_tokenizer_lock = threading.Lock()
_ll_tokenizers: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class GrammarError(ValueError):
    """A schema or grammar that llguidance cannot compile."""


def ll_tokenizer(tokenizer: Any) -> Any:
    """The `llguidance.LLTokenizer` for a Hugging Face fast tokenizer (cached per tokenizer)."""
    import llguidance.hf

    with _tokenizer_lock:
        cached = _ll_tokenizers.get(tokenizer)
        if cached is None:
            cached = llguidance.hf.from_tokenizer(tokenizer)
            _ll_tokenizers[tokenizer] = cached
        return cached


class LLGuidanceConstraint:
    """A `pbd_core.TokenConstraint` backed by one `llguidance.LLMatcher`."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        import llguidance

        self._tokenizer = tokenizer
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"invalid grammar: {self._matcher.get_error()}")
        self._vocab = tokenizer.vocab_size
        self._allowed: torch.Tensor | None = None  # mask of the current state, computed once
        self._bits = torch.arange(32, dtype=torch.int32)

    def allowed_tokens(self) -> torch.Tensor:
        """Boolean mask ``[vocab]`` of the tokens allowed next."""
        if self._allowed is None:
            if self._matcher.is_error():
                raise RuntimeError(f"constraint is in an error state: {self._matcher.get_error()}")
            words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
            # words: [ceil(vocab / 32)] -> bits: [ceil(vocab / 32) * 32]
            bits = (words.unsqueeze(-1) >> self._bits) & 1
            self._allowed = bits.reshape(-1)[: self._vocab].bool()
        return self._allowed

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed_tokens().to(logits.device)
        n = min(logits.shape[-1], allowed.shape[0])
        logits[..., :n].masked_fill_(~allowed[:n], float("-inf"))
        logits[..., n:] = float("-inf")  # padded vocabulary rows the tokenizer never produces
        return logits

    def advance(self, token_id: int) -> None:
        self._allowed = None
        if not self._matcher.consume_token(int(token_id)):
            raise RuntimeError(f"token {token_id} violates the grammar: {self._matcher.get_error()}")

    def is_finished(self) -> bool:
        if self._matcher.is_stopped():
            return True
        if not self._matcher.is_accepting():
            return False
        # Complete when nothing but end-of-sequence can follow.
        allowed = self.allowed_tokens()
        if int(allowed.sum()) > _MAX_END_TOKENS:
            return False
        return all(self._tokenizer.is_special_token(t) for t in allowed.nonzero().flatten().tolist())


_MAX_END_TOKENS = 8
"""More allowed tokens than this means text can still follow (end-of-sequence tokens are few)."""


def json_schema_constraint(tokenizer: Any, schema: dict[str, Any]) -> Callable[[], LLGuidanceConstraint]:
    """Factory of constraints that force one JSON value valid for ``schema``."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=_JSON_OPTIONS)
    return _factory(tokenizer, grammar)


def tool_call_constraint(
    tokenizer: Any,
    tools: list[dict[str, Any]],
    tool_choice: str | None = "required",
    *,
    response_schema: dict[str, Any] | None = None,
) -> Callable[[], LLGuidanceConstraint]:
    """Factory of constraints for tool calling in the ``<tool_call>{...}</tool_call>`` format.

    Args:
        tools: OpenAI-format tools (``{"type": "function", "function": {...}}`` or the inner dict).
        tool_choice: ``"required"``/``"any"``: exactly one call to one of the tools;
            a tool name: one call to that tool; ``"auto"``: either a call or plain
            text that contains no ``<tool_call>`` tag.
        response_schema: With ``"auto"``, the answer that is not a call must be JSON for this
            schema instead of free text (an agent's structured final answer).
    """
    functions = [tool.get("function", tool) for tool in tools]
    if not functions:
        raise ValueError("tool_call_constraint needs at least one tool")
    if tool_choice in ("required", "any", "auto", None):
        chosen = functions
    else:
        chosen = [f for f in functions if f["name"] == tool_choice]
        if not chosen:
            names = [f["name"] for f in functions]
            raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {names}")
    schema = {"anyOf": [_call_schema(f) for f in chosen]} if len(chosen) > 1 else _call_schema(chosen[0])
    schema["x-guidance"] = _JSON_OPTIONS
    call = f"call: {json.dumps(TOOL_CALL_START)} \"\\n\" %json {json.dumps(schema)} \"\\n\" {json.dumps(TOOL_CALL_END)}"
    if tool_choice == "auto" and response_schema is not None:
        answer = dict(close_objects(response_schema), **{"x-guidance": _JSON_OPTIONS})
        start = f"start: call | answer\nanswer: %json {json.dumps(answer)}"
    elif tool_choice == "auto":
        start = 'start: call | TEXT\nTEXT: /(.|\\n)+/ & ~/(.|\\n)*<tool_call>(.|\\n)*/'
    else:
        start = "start: call"
    import llguidance

    return _factory(tokenizer, llguidance.LLMatcher.grammar_from_lark(f"{start}\n{call}\n"))


def close_objects(schema: Any) -> Any:
    """A copy of ``schema`` where objects with ``properties`` but no ``additionalProperties`` allow no extra keys."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": close_objects(parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _factory(tokenizer: Any, grammar: str) -> Callable[[], LLGuidanceConstraint]:
    import llguidance

    ll = ll_tokenizer(tokenizer)
    error = llguidance.LLMatcher.validate_grammar(grammar, ll)
    if error and not error.startswith("WARNING"):
        raise GrammarError(f"cannot build a grammar: {error}")

    def make() -> LLGuidanceConstraint:
        return LLGuidanceConstraint(ll, grammar)

    return make
