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

import numpy as np
import torch

from .json_completion import Completion, Lex, completes, lex_feed, lex_step, shortest_completion, vocab_of
from .penalties import DryPenalty
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


_MAX_END_TOKENS = 8
"""More allowed tokens than this means text can still follow (end-of-sequence tokens are few)."""
_LOOK_AHEAD = 64
"""Keep track of the completion once the budget is within this many tokens of its last known length."""
_SLACK_CHECKED = 16
"""With this few tokens to spare, the model's candidates are checked against the budget."""
_TOP_CHECKED = 8
"""How many of the model's best tokens are checked then (the others are masked)."""
STRING_REPETITION = DryPenalty()
"""Loop control applied inside JSON string values by default."""


class LLGuidanceConstraint:
    """A `pbd_core.TokenConstraint` backed by one `llguidance.LLMatcher`.

    Besides masking what the grammar forbids it does two things:

    - **Finishes in time.** Given the stream's remaining ``budget``, it keeps a
      shortest completion of the current state at hand
      (`pbd_integrations.json_completion`): when the budget comes down to that
      completion's length only its next token is allowed, so the text is complete
      (valid JSON; a whole ``<tool_call>``) when the budget runs out. In the last
      ``_SLACK_CHECKED`` tokens before that point the model keeps its choice among
      its ``_TOP_CHECKED`` best tokens, but only those after which the completion
      still fits (a token that opens an object with required keys may not).
    - **Breaks loops inside JSON strings** with `DryPenalty` (``string_repetition``;
      None turns it off): small models under greedy decoding repeat a phrase in a
      string value until the budget is gone. Keys, numbers and text outside JSON
      (the free-text side of ``tool_choice="auto"``) are left alone.
    """

    def __init__(self, tokenizer: Any, grammar: str, *, string_repetition: DryPenalty | None = STRING_REPETITION) -> None:
        import llguidance

        self._tokenizer = tokenizer
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"invalid grammar: {self._matcher.get_error()}")
        self._vocab = tokenizer.vocab_size
        self._allowed: torch.Tensor | None = None  # mask of the current state, computed once
        self._bytes = vocab_of(tokenizer)
        self._lex = Lex()  # where the text so far stands in JSON
        self._repetition = string_repetition
        self._string_tokens: list[int] = []  # tokens of the JSON string being written
        self._plan: list[int] | None = None  # a completion of the current state (tokens)
        self._plan_exact = False  # ... known to be a shortest one
        self._stale_plan: list[int] | None = None  # the previous state's plan, a guess for this one
        self._stale_exact = False  # ... known to be a shortest one here too
        self._after: dict[int, Completion | None] = {}  # shortest completions after candidate tokens
        self._known_length: int | None = None  # length of the last plan, to decide when to look
        self.cut_by_budget = False
        """True once the budget forced the completion: the text is complete but cut short."""

    def allowed_tokens(self) -> torch.Tensor:
        """Boolean mask ``[vocab]`` of the tokens allowed next."""
        if self._allowed is None:
            if self._matcher.is_error():
                raise RuntimeError(f"constraint is in an error state: {self._matcher.get_error()}")
            bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            self._allowed = torch.from_numpy(bits[: self._vocab].view(np.bool_))
        return self._allowed

    def _forbidden(self) -> torch.Tensor:
        return torch.from_numpy(~self.allowed_tokens().numpy())

    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        if self._repetition is not None and self._lex.in_json_string and self._string_tokens:
            self._repetition.apply(self._string_tokens, logits)
        allowed = self.allowed_tokens()
        n = min(logits.shape[-1], allowed.shape[0])
        logits[..., :n].masked_fill_(self._forbidden()[:n].to(logits.device), float("-inf"))
        logits[..., n:] = float("-inf")  # padded vocabulary rows the tokenizer never produces
        if budget is not None:
            self._fit_budget(logits, int(budget))
        return logits

    def advance(self, token_id: int) -> None:
        token_id = int(token_id)
        self._allowed = None
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"token {token_id} violates the grammar: {self._matcher.get_error()}")
        before = self._lex
        data = self._bytes.token_bytes[token_id] if token_id < len(self._bytes.token_bytes) else b""
        opened = False
        lex = before
        for byte in data:
            after = lex_step(lex, byte)
            opened = opened or (after.in_json_string and not lex.in_json_string)
            lex = after
        self._lex = lex
        # More of the same string or number: the value is no nearer its end than before.
        content = (
            before.mode == lex.mode == 1
            and before.stack == lex.stack
            and before.in_string == lex.in_string
            and not before.escape
            and not any(b in b'"{}[],:\\' for b in data)
        )
        self._follow_plan(token_id, content)
        if not lex.in_json_string:
            self._string_tokens = []
        elif opened or not before.in_json_string:
            self._string_tokens = [token_id]
        else:
            self._string_tokens.append(token_id)

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

    def min_tokens_to_finish(self) -> int:
        """Fewest tokens that complete the text from the current state (0 if complete, or if unknown)."""
        plan = self._completion(exact=True)
        return len(plan) if plan is not None else 0

    def completion_text(self) -> str | None:
        """The text of a shortest completion of the current state (for messages and tests)."""
        plan = self._completion(exact=True)
        return None if plan is None else b"".join(self._bytes.token_bytes[t] for t in plan).decode("utf-8", "replace")

    # ------------------------------------------------------------------ the budget

    def _fit_budget(self, logits: torch.Tensor, budget: int) -> None:
        """Narrow ``logits`` so that the text can still be completed within ``budget`` tokens."""
        if self._known_length is not None and budget > self._known_length + _LOOK_AHEAD:
            return  # far from the end: nothing to compute yet
        plan = self._completion(exact=False)
        if plan is not None and budget - len(plan) <= _SLACK_CHECKED and not self._plan_exact:
            plan = self._completion(exact=True)
        if plan is None:
            return  # no completion found (a grammar the search cannot handle): decode as without a budget
        slack = budget - len(plan)
        if slack > _SLACK_CHECKED:
            return
        if slack <= 0 and plan:
            self.cut_by_budget = True
            logits.fill_(float("-inf"))
            logits[plan[0]] = 0.0
            return
        self._keep_safe(logits, plan, budget)

    def _keep_safe(self, logits: torch.Tensor, plan: list[int], budget: int) -> None:
        """Keep the model's best few tokens after which a completion still fits in ``budget - 1``."""
        values, index = torch.topk(logits, min(_TOP_CHECKED, logits.shape[-1]))
        top = [t for v, t in zip(values.tolist(), index.tolist()) if v != float("-inf")]
        safe = [t for t in top if t in plan[:1] or self._fits_after(t, plan, budget - 1)]
        if plan:
            safe += [] if plan[0] in safe else [plan[0]]  # always possible: the completion itself
        else:  # complete already: ending is always possible
            allowed = self.allowed_tokens()
            safe += [t for t in self._tokenizer.eos_tokens if t not in safe and t < len(allowed) and allowed[t]]
        if not safe:
            return
        kept = logits[safe].tolist()
        floor = min((v for v in kept if v != float("-inf")), default=1.0) - 1.0
        logits.fill_(float("-inf"))
        logits[safe] = torch.tensor([v if v != float("-inf") else floor for v in kept], dtype=logits.dtype, device=logits.device)

    def _fits_after(self, token: int, plan: list[int], limit: int) -> bool:
        """Whether the text can be completed in ``limit`` tokens after ``token``."""
        after = self._matcher.deep_copy()
        if not after.consume_token(token):
            return False
        if len(plan) <= limit and completes(after, plan):
            return True  # the current plan still works (text inside a string, a digit, ...)
        if token not in self._after:
            lex = lex_feed(self._lex, self._bytes.token_bytes[token] if token < len(self._bytes.token_bytes) else b"")
            self._after[token] = shortest_completion(after, self._bytes, lex)
        found = self._after[token]
        return found is not None and len(found.tokens) <= limit

    def _completion(self, *, exact: bool) -> list[int] | None:
        """A completion of the current state: the plan, or the last one if it still works, else searched."""
        if self._plan is None or (exact and not self._plan_exact):
            guess, guess_exact = self._stale_plan, self._stale_exact
            self._stale_plan = None
            if guess is not None and (guess_exact or not exact) and completes(self._matcher, guess):
                self._plan, self._plan_exact = guess, guess_exact
            else:
                found = shortest_completion(self._matcher, self._bytes, self._lex)
                self._plan, self._plan_exact = (found.tokens if found is not None else None), True
        self._known_length = len(self._plan) if self._plan is not None else self._known_length
        return self._plan

    def _follow_plan(self, token: int, content: bool) -> None:
        """After ``token``: shift the plan when the token was its next one, else keep it as a guess.

        The guess stays a shortest completion when the token only lengthened a string or
        number whose shortest completion began by ending it: what follows is unchanged.
        """
        found = self._after.get(token)
        self._after = {}
        if self._plan is not None and self._plan[:1] == [token]:
            self._plan = self._plan[1:]
        elif found is not None:
            self._plan, self._plan_exact = found.tokens, True
        else:
            closes_first = bool(self._plan) and self._bytes.token_bytes[self._plan[0]][:1] in (b'"', b",", b"}", b"]")
            if self._plan is not None:
                self._stale_plan, self._stale_exact = self._plan, self._plan_exact and content and closes_first
            self._plan, self._plan_exact = None, False


def json_schema_constraint(
    tokenizer: Any, schema: dict[str, Any], *, string_repetition: DryPenalty | None = STRING_REPETITION
) -> Callable[[], LLGuidanceConstraint]:
    """Factory of constraints that force one JSON value valid for ``schema``.

    ``string_repetition``: loop control inside string values (`LLGuidanceConstraint`); None turns it off.
    """
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=_JSON_OPTIONS)
    # A server's guided decoding takes lark text: the same schema, through llguidance's %json.
    lark = f"start: %json {json.dumps(dict(close_objects(schema), **{'x-guidance': _JSON_OPTIONS}))}\n"
    return _factory(tokenizer, grammar, lark=lark, string_repetition=string_repetition)


def tool_call_constraint(
    tokenizer: Any,
    tools: list[dict[str, Any]],
    tool_choice: str | None = "required",
    *,
    response_schema: dict[str, Any] | None = None,
    string_repetition: DryPenalty | None = STRING_REPETITION,
    max_calls: int = 1,
    min_calls: int = 1,
) -> Callable[[], LLGuidanceConstraint]:
    """Factory of constraints for tool calling in the ``<tool_call>{...}</tool_call>`` format.

    Args:
        tools: OpenAI-format tools (``{"type": "function", "function": {...}}`` or the inner dict).
        tool_choice: ``"required"``/``"any"``: exactly one call to one of the tools;
            a tool name: one call to that tool; ``"auto"``: either a call or plain
            text that contains no ``<tool_call>`` tag.
        response_schema: With ``"auto"``, the answer that is not a call must be JSON for this
            schema instead of free text (an agent's structured final answer).
        string_repetition: Loop control inside the JSON's string values (`LLGuidanceConstraint`);
            None turns it off. Free text (with ``"auto"``) is never penalised.
        max_calls: With a required or named call: up to this many calls, one after another, each on
            its own line (how Qwen2.5 writes several calls). 1: exactly one call.
        min_calls: ... and at least this many (a benchmark's baseline writes exactly N calls).
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
    start_tag, end_tag = _tag(tokenizer, TOOL_CALL_START), _tag(tokenizer, TOOL_CALL_END)
    call = f"call: {start_tag} \"\\n\" %json {json.dumps(schema)} \"\\n\" {end_tag}"
    if tool_choice == "auto" and response_schema is not None:
        answer = dict(close_objects(response_schema), **{"x-guidance": _JSON_OPTIONS})
        start = f"start: call | answer\nanswer: %json {json.dumps(answer)}"
    elif tool_choice == "auto":
        start = 'start: call | TEXT\nTEXT: /(.|\\n)+/ & ~/(.|\\n)*<tool_call>(.|\\n)*/'
    elif max_calls > 1:
        start = f'start: call ("\\n" call){{{min(min_calls, max_calls) - 1},{max_calls - 1}}}'
    else:
        start = "start: call"
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(f"{start}\n{call}\n")
    return _factory(tokenizer, grammar, string_repetition=string_repetition)


def _tag(tokenizer: Any, text: str) -> str:
    """Lark for a tag such as ``<tool_call>``: its text, or the model's own token for it where it has one.

    Qwen2.5 writes ``<tool_call>`` as one added token (id 151657), which llguidance treats as a
    special token: it is not the text ``"<tool_call>"`` to the grammar (its mask let it through, but
    consuming it failed), so the grammar names it by id too (``<[151657]>``).
    """
    literal = json.dumps(text)
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception:  # not a Hugging Face tokenizer: the text is all there is
        return literal
    if len(ids) == 1 and ll_tokenizer(tokenizer).is_special_token(ids[0]):
        return f"(<[{ids[0]}]> | {literal})"
    return literal


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


def _factory(
    tokenizer: Any,
    grammar: str,
    *,
    lark: str | None = None,
    string_repetition: DryPenalty | None = STRING_REPETITION,
) -> Callable[[], LLGuidanceConstraint]:
    import llguidance

    ll = ll_tokenizer(tokenizer)
    error = llguidance.LLMatcher.validate_grammar(grammar, ll)
    if error and not error.startswith("WARNING"):
        raise GrammarError(f"cannot build a grammar: {error}")

    def make() -> LLGuidanceConstraint:
        return LLGuidanceConstraint(ll, grammar, string_repetition=string_repetition)

    make.grammar = lark or grammar  # lark text a server's guided decoding enforces in place of the local matcher
    return make
