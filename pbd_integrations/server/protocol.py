"""The OpenAI wire format of `pbd serve`: request models, request -> engine call, events -> chunks.

Everything here is free of I/O, so it is tested without a socket:

- **Requests** are pydantic models (`ChatCompletionRequest`, `CompletionRequest`). Standard
  fields follow OpenAI; the engine's options ride along as extension fields of the same
  name (``branches``, ``max_branch_tokens``, ``max_branches``, ``merge``, ``parallel``,
  ``force_plan``, ``top_k``, ``repetition_penalty``, ``output_format``: ``"readable"``, the default,
  or ``"raw"`` for the branch-format text; ``repetition_guard``, ``trunk_repetition_guard``,
  ``repeated_label_guard``, ``exemplar_step``, ``plan_in_view``, ``descriptive_titles``, ``nonempty_branches``,
  ``single_title_plans``); vLLM's completion extensions that
  `pbd_core.executors.remote` sends are honoured (``return_token_ids``,
  ``include_stop_str_in_output``, ``structured_outputs``, ``skip_special_tokens``).
  Unknown fields are ignored, as vLLM does; unsupported values of known fields
  (``n > 1``, ``logprobs``, penalties) are refused with the field named.
- **`chat_call` / `completion_call`** turn a request into an `EngineCall`: the prompt, the
  options of `ParallelBranchDecoder.stream`, and how to read the output. Messages and tools
  are rendered by `pbd_integrations.chat.render_chat`, grammars come from
  `pbd_integrations.grammar`, the penalty from `pbd_integrations.penalties`: one rendering
  and one grammar per request, whichever adapter sends it. Bad input raises `APIError`
  (a 4xx) naming the field.
- **`ChatChunks` / `CompletionChunks`** turn engine events into OpenAI stream chunks
  (reading-order text, readable unless the request asks for raw, tool calls parsed by `pbd_integrations.tool_calls.ToolCallSplitter`,
  a finish chunk, a usage chunk); a non-streamed response is `aggregate_chat` /
  `aggregate_completion` of the same chunks, so both say the same by construction.
  Branch progress travels in a top-level ``"pbd"`` field that OpenAI clients ignore::

      {"pbd": {"event": "branch_start", "branch": 0, "title": "Tea", "block": 0}}
      {"pbd": {"event": "branch_token", "branch": 1, "text": " Coffee is"}}
      {"pbd": {"event": "branch_end", "branch": 1, "finish_reason": "end_marker"}}
      {"pbd": {"event": "final", "finish_reason": "eos", "parallel": true, "branches": [...], "stats": {...}}}

A plain completion (``parallel`` false: what the remote executor asks for) records every
sampled token with `TokenTap`, so chunks carry the exact ``token_ids`` (EOS included) and the
finish names the stop string that ended it, as vLLM's do.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pbd_core import (
    BranchEndEvent,
    BranchStartEvent,
    DecodeOptions,
    FinalEvent,
    RawPrompt,
    TokenEvent,
    TokenIds,
)

from pbd_core.readable import text_order

from ..chat import json_instructions, render_chat
from ..penalties import punctuation_exemption, with_repetition_penalty
from ..tool_calls import ToolCallParseError, ToolCallSplitter, new_tool_call_id

logger = logging.getLogger("pbd.serve")

DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for ``/v1/completions`` (chat uses the engine's default)."""

# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """A request the server refuses or cannot serve, as OpenAI reports it."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        type: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Engine option names as a request spells them, most specific first (matched as whole words).
_ENGINE_PARAMS = (
    ("max_new_tokens", "max_tokens"),
    ("max_branch_tokens", "max_branch_tokens"),
    ("max_branches", "max_branches"),
    ("branch title", "branches"),
    ("branches", "branches"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("seed", "seed"),
    ("stop", "stop"),
    ("merge", "merge"),
    ("parallel", "parallel"),
    ("repetition_penalty", "repetition_penalty"),
    ("prompt", None),  # the prompt field of the request at hand
)


def engine_error(error: ValueError, *, prompt_param: str, max_tokens_param: str = "max_tokens") -> APIError:
    """A 400 for the engine's own validation error, with the request's field named."""
    message = str(error).replace("max_new_tokens", max_tokens_param)
    param = None
    for needle, name in _ENGINE_PARAMS:
        if re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", str(error)):
            param = name or prompt_param
            break
    if param == "max_tokens":
        param = max_tokens_param
    return APIError(message, param=param)


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """A 400 from pydantic's errors: the first one, with its field path as ``param``."""
    if not errors:
        return APIError("invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(f"the request body is not valid JSON: {first.get('msg', '')}", param=None)
    # Union members add their type names to the path ("prompt.str"): keep the request's fields.
    loc = [part for part in loc if not re.fullmatch(r"(str|int|float|bool|list\[.*\]|dict\[.*\]|function-.*)", part)]
    param = ".".join(loc) or None
    text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = f"{param}: {text}" if param else text
    more = len(errors) - 1
    return APIError(message + (f" (and {more} more error{'s' if more > 1 else ''})" if more else ""), param=param)


# --------------------------------------------------------------------------- requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(BaseModel):
    """Fields both endpoints share: sampling, the engine's extensions, refusals of what it cannot do."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Engine extensions (see `pbd_core.DecodeOptions`).
    branches: list[str] | None = None
    max_branch_tokens: int | None = Field(default=None, ge=1)
    max_branches: int | None = Field(default=None, ge=1)
    merge: Literal["reuse", "recompute"] | None = None
    parallel: bool | None = None
    force_plan: bool | None = None
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    repetition_guard: bool | int | None = Field(default=None, ge=0)
    trunk_repetition_guard: bool | int | None = Field(default=None, ge=0)
    repeated_label_guard: bool | None = None
    exemplar_step: bool | None = None
    plan_in_view: bool | None = None
    descriptive_titles: bool | None = None
    nonempty_branches: bool | None = None
    single_title_plans: bool | None = None
    output_format: Literal["readable", "raw"] | None = None
    """What ``content``/``text`` holds: the answer as a user reads it (each step under a ``**<title>**`` line,
    no format markers; the default), or ``raw``: the branch-format text (``####<title>:...####%%%%...``)."""

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send one request per choice")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("only 0 is supported; use the repetition_penalty extension field instead")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=DEFAULT_COMPLETION_MAX_TOKENS, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None
    # vLLM's extensions, as `pbd_core.executors.remote` sends them.
    return_token_ids: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    """Accepted for compatibility: text is the engine's, which leaves special tokens out."""
    structured_outputs: dict[str, Any] | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _one_best(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt, or chat messages rendered with the model's template."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


# --------------------------------------------------------------------------- engine calls


@dataclass
class EngineCall:
    """What one request asks of the engine, and how to read what comes back."""

    prompt: Any
    options: dict[str, Any]
    prompt_ids: list[int]
    parse_tools: bool = False
    sampled: list[int] | None = None
    """Every sampled token of a plain decode, in order (appended by `TokenTap` in the decode thread)."""
    stops: list[str] = field(default_factory=list)


class TokenTap:
    """A pass-through `pbd_core.TokenConstraint` that records each sampled token (EOS included).

    It wraps the request's own constraint (a grammar, a penalty) or none; masking,
    completion and budgets are the inner constraint's. Used for plain decodes only,
    where the engine has one stream.
    """

    def __init__(self, sampled: list[int], inner: Any = None) -> None:
        self.sampled = sampled
        self.inner = inner

    def mask_logits(self, logits: Any, budget: int | None = None) -> Any:
        if self.inner is None:
            return logits
        return self.inner.mask_logits(logits) if budget is None else self.inner.mask_logits(logits, budget)

    def advance(self, token_id: int) -> None:
        self.sampled.append(int(token_id))
        if self.inner is not None:
            self.inner.advance(token_id)

    def is_finished(self) -> bool:
        return bool(self.inner is not None and self.inner.is_finished())

    def min_tokens_to_finish(self) -> int:
        method = getattr(self.inner, "min_tokens_to_finish", None)
        return int(method()) if callable(method) else 0

    @property
    def cut_by_budget(self) -> bool:
        return bool(getattr(self.inner, "cut_by_budget", False))


def token_tap(sampled: list[int], factory: Callable[[], Any] | None) -> Callable[[], TokenTap]:
    """Constraint factory: `TokenTap` around ``factory``'s constraint (``factory`` may be None)."""

    def make() -> TokenTap:
        return TokenTap(sampled, factory() if factory is not None else None)

    return make


@functools.lru_cache(maxsize=64)
def _cached_constraint(tokenizer: Any, kind: str, spec: str, tool_choice: str) -> Callable[[], Any]:
    """Grammar factories, compiled once per tokenizer and spec (compiling takes up to a second).

    ``kind``: ``"json"`` (``spec`` is the schema), ``"tools"`` (``{"tools", "response_schema"}``)
    or ``"lark"`` (``spec`` is lark text in llguidance's syntax, as a server's guided decoding takes).
    """
    from .. import grammar

    if kind == "tools":
        request = json.loads(spec)
        return grammar.tool_call_constraint(
            tokenizer, request["tools"], tool_choice, response_schema=request["response_schema"]
        )
    if kind == "lark":
        import llguidance

        return grammar._factory(tokenizer, llguidance.LLMatcher.grammar_from_lark(spec), lark=spec)
    return grammar.json_schema_constraint(tokenizer, json.loads(spec))


@functools.lru_cache(maxsize=8)
def _punctuation_exemption(tokenizer: Any) -> Callable[[int], bool]:
    return punctuation_exemption(tokenizer)


def _constraint(tokenizer: Any, kind: str, spec: Any, tool_choice: str, *, param: str) -> Callable[[], Any]:
    # Keys keep the request's order: a grammar writes an object's properties in the order the schema
    # lists them (and the prompt shows them so), so a schema with its keys sorted would be a different
    # grammar. The cache key is this exact text; the same schema sent again hits the cache.
    text = spec if isinstance(spec, str) else json.dumps(spec)
    try:
        return _cached_constraint(tokenizer, kind, text, tool_choice)
    except ImportError as error:
        raise APIError(f"{param} needs llguidance on the server: pip install llguidance", param=param, status=501) from error
    except ValueError as error:  # GrammarError, a schema llguidance cannot compile, a bad tool choice
        raise APIError(f"{param}: {error}", param=param) from error


def _with_penalty(decoder: Any, penalty: float | None, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
    if penalty is None or penalty == 1.0:
        return factory
    return with_repetition_penalty(penalty, factory, exempt=_punctuation_exemption(decoder.tokenizer))


def _options(request: _Request, max_tokens: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if max_tokens is not None:
        options["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "top_k", "seed", "branches", "max_branch_tokens", "max_branches",
                 "merge", "parallel", "force_plan", "output_format", "repetition_guard", "trunk_repetition_guard",
                 "repeated_label_guard", "exemplar_step", "plan_in_view", "descriptive_titles",
                 "nonempty_branches", "single_title_plans"):
        value = getattr(request, name)
        if value is not None:
            options[name] = value
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if stops:
        options["stop"] = stops
    return options


def _validate(decoder: Any, call: EngineCall, *, prompt_param: str, max_tokens_param: str) -> EngineCall:
    """The engine's own checks, run now so a bad request is refused without waiting for the model."""
    try:
        DecodeOptions.from_kwargs(**call.options)
    except ValueError as error:
        raise engine_error(error, prompt_param=prompt_param, max_tokens_param=max_tokens_param) from error
    window = getattr(decoder, "context_window", None)
    if not call.prompt_ids:
        raise APIError(f"{prompt_param} must not be empty", param=prompt_param)
    if window and len(call.prompt_ids) >= window:
        raise APIError(
            f"{prompt_param} is {len(call.prompt_ids)} tokens but the model's context window is {window} tokens",
            param=prompt_param,
        )
    return call


def _encode(decoder: Any, text: str) -> list[int]:
    return list(decoder.tokenizer(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------- chat


def _message_dict(index: int, message: ChatMessage) -> dict[str, Any]:
    """An OpenAI message as the role/content dict `render_chat` takes."""
    content = message.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise APIError(
                    f"messages[{index}].content: only text parts are supported, got {part.get('type')!r}",
                    param=f"messages[{index}].content",
                )
        content = "".join(parts)
    role = "system" if message.role == "developer" else message.role
    entry: dict[str, Any] = {"role": role, "content": content or ""}
    if message.tool_calls:
        entry["tool_calls"] = message.tool_calls
    if role == "tool":
        entry["tool_call_id"] = message.tool_call_id
        if message.name:
            entry["name"] = message.name
    return entry


def normalize_tool_choice(tool_choice: Any, tools: list[dict[str, Any]] | None) -> str:
    """``"auto"``, ``"required"``, ``"none"`` or a tool name, from OpenAI's ``tool_choice``."""
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice is None:
        return "auto" if tools else "none"
    if not tools and tool_choice != "none":
        raise APIError("tool_choice is only allowed when tools are given", param="tool_choice")
    if tool_choice in ("auto", "required", "none"):
        return tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type", "function") == "function" and name in names:
            return name
        raise APIError(f"tool_choice names the function {name!r}, which is not one of the tools {names}",
                       param="tool_choice")
    raise APIError(
        f"tool_choice must be 'auto', 'required', 'none' or {{'type': 'function', 'function': {{'name': ...}}}}, "
        f"got {tool_choice!r}",
        param="tool_choice",
    )


def response_schema(response_format: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """``(wants_json, schema)`` from OpenAI's ``response_format`` (``text``, ``json_object``, ``json_schema``)."""
    if not response_format or response_format.get("type") in (None, "text"):
        return False, None
    kind = response_format.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else response_format.get("schema")
        if not isinstance(schema, dict):
            raise APIError("response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema.schema")
        return True, schema
    raise APIError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                   param="response_format.type")


def chat_call(decoder: Any, request: ChatCompletionRequest) -> EngineCall:
    """The engine call of a chat completion (messages rendered, tools and formats as grammars)."""
    if not request.messages:
        raise APIError("messages must not be empty", param="messages")
    messages = [_message_dict(i, m) for i, m in enumerate(request.messages)]
    tools = [t.model_dump(exclude_none=True) for t in request.tools] if request.tools else None
    choice = normalize_tool_choice(request.tool_choice, tools)
    if choice == "none":
        tools = None
    wants_json, schema = response_schema(request.response_format)
    try:
        text = render_chat(decoder, messages, tools=tools, system_text=json_instructions(schema) if wants_json else None)
    except APIError:
        raise
    except Exception as error:  # a template that cannot render these messages, tool arguments that are not JSON
        raise APIError(f"messages cannot be rendered with the model's chat template: {error}", param="messages") from error
    max_tokens = request.max_completion_tokens or request.max_tokens
    options = _options(request, max_tokens)
    constraint = None
    if tools:
        # With a response format too (an agent's structured answer), the model calls a tool or answers in JSON.
        spec = {"tools": tools, "response_schema": (schema or {"type": "object"}) if wants_json else None}
        constraint = _constraint(decoder.tokenizer, "tools", spec, choice, param="tools")
    elif wants_json:
        constraint = _constraint(decoder.tokenizer, "json", schema or {"type": "object"}, "", param="response_format")
    constraint = _with_penalty(decoder, request.repetition_penalty, constraint)
    if constraint is not None:
        options["constraint"] = constraint
    call = EngineCall(RawPrompt(text), options, _encode(decoder, text), parse_tools=bool(tools),
                      stops=list(options.get("stop", [])))
    max_param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    return _validate(decoder, call, prompt_param="messages", max_tokens_param=max_param)


# ----------------------------------------------------------------- completions


def _prompt_of(decoder: Any, prompt: Any) -> tuple[str, list[int]]:
    """``(text to decode, its token ids)``: a string, or token ids decoded to the text they stand for."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    elif isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        raise APIError("prompt: batches of prompts are not supported; send one request per prompt", param="prompt")
    if isinstance(prompt, str):
        if not prompt:
            raise APIError("prompt must not be empty", param="prompt")
        return prompt, _encode(decoder, prompt)
    if not prompt:
        raise APIError("prompt must not be empty", param="prompt")
    try:
        vocab = len(decoder.tokenizer)
    except TypeError:
        vocab = None
    bad = [t for t in prompt if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        raise APIError(f"prompt: token ids {bad[:5]} are outside the vocabulary (0..{vocab})", param="prompt")
    # Decoded exactly as given (TokenIds): a client's contexts hold tokens the model sampled, which need
    # not be the tokenizer's encoding of their text.
    text = decoder.tokenizer.decode(list(prompt), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text, list(prompt)


def _is_text(prompt: Any) -> bool:
    return isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str)


def _structured_outputs(decoder: Any, spec: dict[str, Any]) -> Callable[[], Any]:
    """vLLM's ``structured_outputs``: ``{"grammar": <lark, llguidance syntax>}`` or ``{"json": <schema>}``."""
    if spec.get("grammar") is not None:
        if not isinstance(spec["grammar"], str) or not spec["grammar"].strip():
            raise APIError("structured_outputs.grammar must be lark text", param="structured_outputs.grammar")
        return _constraint(decoder.tokenizer, "lark", spec["grammar"], "", param="structured_outputs.grammar")
    if spec.get("json") is not None:
        schema = spec["json"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise APIError(f"structured_outputs.json is not JSON: {error}", param="structured_outputs.json") from error
        if not isinstance(schema, dict):
            raise APIError("structured_outputs.json must be a JSON schema object", param="structured_outputs.json")
        return _constraint(decoder.tokenizer, "json", schema, "", param="structured_outputs.json")
    kinds = sorted(k for k, v in spec.items() if v is not None)
    raise APIError(f"structured_outputs supports 'grammar' (lark) and 'json', got {kinds}", param="structured_outputs")


def completion_call(decoder: Any, request: CompletionRequest) -> EngineCall:
    """The engine call of a text completion.

    Plain decoding unless ``branches`` are given or ``parallel`` is true: a completion
    continues the text as it is, and a plain decode is what the remote executor asks for
    (it does the branching itself, one request per branch).
    """
    text, ids = _prompt_of(decoder, request.prompt)
    options = _options(request, request.max_tokens)
    options["parallel"] = request.parallel if request.parallel is not None else bool(request.branches)
    plain = not options["parallel"]
    if not plain and (request.return_token_ids or request.include_stop_str_in_output):
        field_name = "return_token_ids" if request.return_token_ids else "include_stop_str_in_output"
        raise APIError(f"{field_name} needs a plain decode (parallel false): a parallel answer has several streams",
                       param=field_name)
    constraint = _structured_outputs(decoder, request.structured_outputs) if request.structured_outputs else None
    constraint = _with_penalty(decoder, request.repetition_penalty, constraint)
    sampled: list[int] | None = None
    if plain:
        sampled = []
        constraint = token_tap(sampled, constraint)
    if constraint is not None:
        options["constraint"] = constraint
    prompt = RawPrompt(text) if isinstance(request.prompt, str) or _is_text(request.prompt) else TokenIds(ids)
    call = EngineCall(prompt, options, ids, sampled=sampled, stops=list(options.get("stop", [])))
    return _validate(decoder, call, prompt_param="prompt", max_tokens_param="max_tokens")


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line (``data: ...`` and a blank line)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def usage_of(result: Any) -> dict[str, int]:
    stats = result.stats
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    }


def finish_reason(result: Any, has_tool_calls: bool = False) -> str:
    """OpenAI's finish reason: ``length`` for a budget, ``tool_calls``, else ``stop``."""
    if result.finish_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def summary(result: Any) -> dict[str, Any]:
    """The ``pbd`` extension of the finish chunk: how the engine decoded the answer."""
    return {
        "event": "final",
        "finish_reason": result.finish_reason,
        "parallel": result.parallel,
        "branches": [
            {"title": b.title, "tokens": len(b.token_ids), "finish_reason": b.finish_reason, "block": b.block}
            for b in result.branches
        ],
        "stats": result.stats.as_dict(),
    }


def _progress(event: Any) -> dict[str, Any] | None:
    """A branch event as the ``pbd`` extension of a chunk (None for trunk text and the final event)."""
    if isinstance(event, BranchStartEvent):
        return {"event": "branch_start", "branch": event.index, "title": event.title, "block": event.block}
    if isinstance(event, TokenEvent) and event.branch is not None:
        return {"event": "branch_token", "branch": event.branch, "text": event.text}
    if isinstance(event, BranchEndEvent):
        return {"event": "branch_end", "branch": event.index, "finish_reason": event.finish_reason}
    return None


class ChatChunks:
    """Engine events in, ``chat.completion.chunk`` dicts out.

    Text goes out in reading order, the first branch live, later ones as the earlier ones end:
    readable (`pbd_core.ReadableText`: each step under its title, no format markers) unless
    the request asks for ``output_format="raw"`` (`pbd_core.ReadingOrder`: the branch-format
    text; the ``pbd`` branch events carry that text either way). With tools, text that may be a call is held back by
    `ToolCallSplitter` and the calls go out as one ``tool_calls`` delta at the end. The
    finish chunk carries ``finish_reason`` and the ``pbd`` summary; with ``include_usage``
    a last chunk with no choices carries ``usage``.
    """

    def __init__(self, model: str, *, parse_tools: bool = False, include_usage: bool = False,
                 completion_id: str | None = None, created: int | None = None,
                 id_factory: Callable[[], str] = new_tool_call_id, output_format: str = "readable") -> None:
        self.id = completion_id or new_id("chatcmpl")
        self.created = int(time.time()) if created is None else created
        self.model = model
        self.include_usage = include_usage
        self._order = text_order(output_format)
        self._splitter = ToolCallSplitter(id_factory=id_factory) if parse_tools else None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, pbd: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if pbd is not None:
            chunk["pbd"] = pbd
        return chunk

    def start(self) -> list[dict[str, Any]]:
        """The opening chunk (the assistant's role), sent before any event."""
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: Any) -> list[dict[str, Any]]:
        text = "".join(self._order.feed(event))
        if self._splitter is not None:
            text = self._splitter.feed(text)
        progress = _progress(event)
        chunks = [self._chunk({"content": text} if text else {}, pbd=progress)] if text or progress else []
        if isinstance(event, FinalEvent):
            chunks += self._finish(event.result)
        return chunks

    def _finish(self, result: Any) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        calls: list[Any] = []
        if self._splitter is not None:
            try:
                tail, calls = self._splitter.finish()
            except ToolCallParseError:
                tail = self._splitter.held  # not a readable call (e.g. cut by the budget): it is text
            if tail:
                chunks.append(self._chunk({"content": tail}))
        if calls:
            deltas = [
                {"index": i, "id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for i, c in enumerate(calls)
            ]
            chunks.append(self._chunk({"tool_calls": deltas}))
        chunks.append(self._chunk({}, finish=finish_reason(result, bool(calls)), pbd=summary(result)))
        if self.include_usage:
            chunks.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [], "usage": usage_of(result)})
        return chunks


def aggregate_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` that a list of `ChatChunks` chunks (usage included) adds up to."""
    content, calls, finish, usage, pbd = [], [], None, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        if chunk.get("pbd", {}).get("event") == "final":
            pbd = chunk["pbd"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            calls.extend(delta.get("tool_calls") or [])
            finish = choice.get("finish_reason") or finish
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    first = chunks[0]
    return {
        "id": first["id"],
        "object": "chat.completion",
        "created": first["created"],
        "model": first["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "pbd": pbd,
    }


class CompletionChunks:
    """Engine events in, ``text_completion`` chunk dicts out (vLLM's extensions included).

    For a plain decode ``sampled`` is the `TokenTap`'s list: each chunk carries the ids
    sampled up to its text's token (``return_token_ids``), the finish chunk the rest (EOS
    included), and a stop string is named in ``stop_reason`` and, with
    ``include_stop_str_in_output``, written out. ``context_ids`` are the last prompt ids,
    so the stop string is read from the same text the engine matched it in. Text is readable
    or raw as in `ChatChunks` (a plain decode's text is the same either way, chunk for chunk).
    """

    def __init__(self, model: str, tokenizer: Any, *, sampled: list[int] | None = None, stops: list[str] = (),
                 context_ids: list[int] = (), return_token_ids: bool = False, include_stop: bool = False,
                 include_usage: bool = False, completion_id: str | None = None, created: int | None = None,
                 output_format: str = "readable") -> None:
        self.id = completion_id or new_id("cmpl")
        self.created = int(time.time()) if created is None else created
        self.model = model
        self.include_usage = include_usage
        self._tokenizer = tokenizer
        self._sampled = sampled
        self._sent = 0  # sampled tokens already put in a chunk
        self._stops = list(stops)
        self._context = list(context_ids)[-4:]
        self._return_ids = return_token_ids
        self._include_stop = include_stop
        self._order = text_order(output_format)

    def _chunk(self, text: str, ids: list[int] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if self._return_ids:
            choice["token_ids"] = ids or []
        pbd = extra.pop("pbd", None)
        choice.update(extra)
        chunk = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                 "choices": [choice]}
        if pbd is not None:
            chunk["pbd"] = pbd
        return chunk

    def _take(self, upto: int | None) -> list[int]:
        """Sampled ids not yet sent, through the first ``upto`` among them (all of them for None)."""
        if self._sampled is None:
            return []
        pending = self._sampled[self._sent:]
        if upto is not None:
            if upto not in pending:
                return []
            pending = pending[: pending.index(upto) + 1]
        self._sent += len(pending)
        return pending

    def feed(self, event: Any) -> list[dict[str, Any]]:
        text = "".join(self._order.feed(event))
        progress = _progress(event)
        chunks: list[dict[str, Any]] = []
        if isinstance(event, FinalEvent):
            return self._finish(event.result, text)
        ids = self._take(event.token_id) if isinstance(event, TokenEvent) and event.token_id is not None else []
        if text or progress or ids:
            chunks.append(self._chunk(text, ids, pbd=progress))
        return chunks

    def _stop_string(self, result: Any) -> str | None:
        """The stop string that ended a plain decode, read from the text of every sampled token."""
        if result.finish_reason != "stop" or not self._stops or self._sampled is None:
            return None
        from pbd_core.detokenize import TextStream, find_first

        stream = TextStream(self._tokenizer, self._context)
        for token in self._sampled:
            stream.push(token)
        end = len(result.raw_text)
        for stop in self._stops:
            if stream.text.startswith(stop, end):
                return stop
        hit = find_first(stream.text, self._stops, max(0, end - max(map(len, self._stops))))
        return hit[1] if hit else None

    def _finish(self, result: Any, text: str) -> list[dict[str, Any]]:
        stop = self._stop_string(result)
        tail = text + (stop if stop is not None and self._include_stop else "")
        chunks = [self._chunk(tail, self._take(None), finish=finish_reason(result), stop_reason=stop, pbd=summary(result))]
        if self.include_usage:
            chunks.append({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                           "choices": [], "usage": usage_of(result)})
        return chunks


def aggregate_completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``text_completion`` that a list of `CompletionChunks` chunks (usage included) adds up to."""
    text, ids, finish, stop_reason, usage, pbd = [], [], None, None, None, None
    with_ids = False
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        if chunk.get("pbd", {}).get("event") == "final":
            pbd = chunk["pbd"]
        for choice in chunk["choices"]:
            text.append(choice.get("text") or "")
            if "token_ids" in choice:
                with_ids = True
                ids.extend(choice["token_ids"] or [])
            if choice.get("finish_reason"):
                finish, stop_reason = choice["finish_reason"], choice.get("stop_reason")
    choice = {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}
    if with_ids:
        choice["token_ids"] = ids
    first = chunks[0]
    return {"id": first["id"], "object": "text_completion", "created": first["created"], "model": first["model"],
            "choices": [choice], "usage": usage, "pbd": pbd}
