"""`ParallelBranchLLM`: the parallel-branch decoder as a LlamaIndex `FunctionCallingLLM`.

    >>> from pbd_integrations import ParallelBranchLLM
    >>> llm = ParallelBranchLLM(max_tokens=128)  # instant: weights load on first use
    >>> llm.complete("Compare tea and coffee.", branches=["Tea", "Coffee"]).text  # doctest: +SKIP

One code path: every call renders the conversation, validates the decoding
options, then turns the engine's event stream into cumulative chunks
(`convert.ResponseStream`). ``chat`` is the last chunk of that stream; the
async methods run the same decode in a worker thread and hand its events to
the event loop through an `asyncio.Queue`, so the loop stays free while the
model computes. ``complete*`` are delegations to ``chat*``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import LLMStructuredPredictEndEvent, LLMStructuredPredictStartEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.utils import FlexibleModel, process_streaming_objects
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import Model, PydanticProgramMode
from pbd_core import DecodeOptions, RawPrompt
from pbd_core.options import CALL_OPTION_NAMES

from ..chat import added_system_text, render_chat
from ..parallel_tools import cached_tool_call_plan, wants_plan, with_penalty
from ..penalties import with_repetition_penalty
from ..registry import get_decoder, get_remote_decoder
from ..runner import aiterate_events, is_remote, iterate_events
from ..structured import cached_json_constraint, response_schema
from .convert import ResponseStream, to_engine_messages, tool_selections

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool
    from pbd_core import ParallelBranchDecoder

dispatcher = get_dispatcher(__name__)

# Engine options this LLM carries as fields of the same name (``max_tokens`` maps to ``max_new_tokens``).
_DECODING_FIELDS = tuple(name for name in CALL_OPTION_NAMES if name != "max_new_tokens")


class ParallelBranchLLM(FunctionCallingLLM):
    """A local transformers model that decodes independent steps in parallel.

    The fields are the engine's decoding options (`pbd_core.DecodeOptions`),
    named as in the LangChain model (``max_tokens`` is the engine's
    ``max_new_tokens``). Any engine option can also be passed per call, e.g.
    ``llm.chat(messages, branches=["Cats", "Dogs"], max_tokens=64)``; a
    per-call ``stop`` adds to the field's. Unknown per-call options raise
    `ValueError`.
    """

    model: Any = Field(
        default="default",
        description=(
            'Model source: "default" (SmolLM2-135M-Instruct, offline), "qwen2.5-coder-0.5b", a local '
            "transformers folder, a .gguf path, or a ParallelBranchDecoder. Weights load on first use "
            "and are shared by every adapter naming the same source."
        ),
    )
    dtype: str = Field(default="auto", description='Weight dtype ("auto" picks bf16 where the CPU supports it).')
    device: str = Field(default="auto", description='Torch device ("auto": CUDA when present, else CPU).')
    backend: Literal["torch", "llama.cpp"] = Field(
        default="torch",
        description='"llama.cpp" decodes the model\'s GGUF on llama.cpp\'s quantized CPU kernels (the llamacpp extra).',
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "A vLLM or SGLang server (OpenAI-compatible, e.g. http://127.0.0.1:8000/v1) to decode on instead of "
            'loading weights here; then ``model`` names the served model ("default": the server\'s only model).'
        ),
    )
    api_key: str | None = Field(default=None, description="Bearer token for ``base_url``.")
    timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for the server's next token.")
    branches: list[str] | None = Field(
        default=None, description="Caller-given step titles: skip planning and decode these steps in parallel."
    )
    max_tokens: int = Field(
        default=512, gt=0, description="Budget for all sampled tokens of an answer (plan, every branch, conclusion)."
    )
    max_branch_tokens: int = Field(default=256, description="Budget for one branch body.")
    max_branches: int = Field(default=16, description="Most branches in one parallel block.")
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(default=0, description="Top-k filter; 0 disables it.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings (never part of the text); a per-call stop adds to these."
    )
    merge: Literal["reuse", "recompute"] = Field(
        default="recompute",
        description="How decoding continues after the branches: re-encode them (default) or keep their KV.",
    )
    parallel: bool = Field(default=True, description="False decodes plainly, token by token (the baseline).")
    output_format: Literal["readable", "raw"] = Field(
        default="readable",
        description=(
            'What the message content holds: "readable" (default) the answer as a user reads it, each step '
            'under a **<title>** line, no format markers; "raw" the branch-format text (####<title>:...####%%%%...). '
            'raw["raw_text"] always has the format text.'
        ),
    )
    force_plan: bool = Field(
        default=False,
        description="The engine starts the answer with a step list ('####'), for models that ignore the format.",
    )
    repetition_guard: bool | int = Field(
        default=True,
        description=(
            "End a branch that repeats itself (finish_reason 'repetition', the repeats cut): True = 32 repeated "
            "tokens, or a line written twice in a row; an int sets the token count; False turns it off."
        ),
    )
    repeated_label_guard: bool = Field(
        default=True,
        description="With repetition_guard: a step that begins a line with a label it used already ('Answer:' twice) ends there.",
    )
    trunk_repetition_guard: bool | int = Field(
        default=False, description="The same guard for the text outside branches (intro, plan, conclusion)."
    )
    plan_in_view: bool = Field(
        default=False, description="Every branch sees the whole title list before its own title."
    )
    exemplar_step: bool = Field(
        default=False,
        description="Write a block's first step alone; the other steps then see it as a worked example.",
    )
    descriptive_titles: bool = Field(
        default=True,
        description=(
            "While the model plans, a title may not start with a number, 'Step'/'Part', an answer label "
            "('Answer', 'Yes') or '#', and a question title ends at its '?' (in-process models)."
        ),
    )
    single_title_plans: bool = Field(
        default=False,
        description="Decode a one-title list the model plans as a block; False drops it once and the model answers directly.",
    )
    nonempty_branches: bool = Field(
        default=True,
        description="A branch may not end before it has written a non-space character (in-process models).",
    )
    plan_instructions: bool | None = Field(
        default=None,
        description=(
            "Add the branch-format instructions (pbd_integrations.prompts.PLANNING_SYSTEM_PROMPT) to the system "
            "message so the model plans independent steps on the caller's own prompts. None (default): unless the "
            "model answers worse with them (MODELS_WITHOUT_PLANNING_INSTRUCTIONS: the default SmolLM2-135M); True: "
            "always; False: never. Not added with caller branches, tools, structured output or parallel=False."
        ),
    )
    repetition_penalty: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Above 1 discourages a stream from repeating its own tokens (Hugging Face's definition); "
            "small models loop, and inside a JSON string a loop can use up the budget. 1.0 changes nothing."
        ),
    )

    _decoder: ParallelBranchDecoder | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_options(self) -> ParallelBranchLLM:
        """Bad decoding fields fail here; a decoder passed as ``model`` is used as is, ``model`` keeps its source."""
        if not isinstance(self.model, str):
            if not hasattr(self.model, "stream"):
                msg = f"model must be a model source string or a ParallelBranchDecoder, got {type(self.model).__name__}"
                raise ValueError(msg)
            self._decoder = self.model
            self.model = str(getattr(self.model, "source", None) or getattr(self.model, "model_name", "custom"))
        DecodeOptions.from_kwargs(**self._default_options())
        return self

    @classmethod
    def class_name(cls) -> str:
        return "ParallelBranchLLM"

    @property
    def decoder(self) -> ParallelBranchDecoder:
        """The shared decoder, loaded on first use."""
        if self._decoder is None:
            if self.base_url:
                model = None if self.model == "default" else self.model
                self._decoder = get_remote_decoder(self.base_url, model=model, api_key=self.api_key, timeout=self.timeout)
            else:
                self._decoder = get_decoder(self.model, dtype=self.dtype, device=self.device, backend=self.backend)
        return self._decoder

    @property
    def metadata(self) -> LLMMetadata:
        decoder = self.decoder
        return LLMMetadata(
            context_window=decoder.context_window,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=decoder.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        """What callback and instrumentation events show of this LLM.

        LlamaIndex builds it at the start of every call, on the caller's thread:
        before the weights are loaded it reports the fields instead of loading
        them there (an async caller would block its event loop).
        """
        if self._decoder is not None:
            return super().to_payload()
        return {
            "class_name": self.class_name(),
            "model_name": self.model,
            "num_output": self.max_tokens,
            "is_chat_model": True,
            "is_function_calling_model": True,
        }

    # ------------------------------------------------------------------ request building

    def _default_options(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_tokens, **{name: getattr(self, name) for name in _DECODING_FIELDS}}

    def _prepare(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[RawPrompt, dict[str, Any], bool]:
        """Render the prompt and validate the options before any compute.

        Returns the prompt, the engine options, and whether tools were offered.
        """
        tools = kwargs.pop("tools", None) or None
        tool_required = bool(kwargs.pop("tool_required", False))
        tool_choice = kwargs.pop("tool_choice", None)
        parallel_tool_calls = kwargs.pop("parallel_tool_calls", None)
        wants_json, schema, described = response_schema(kwargs.pop("response_format", None))
        plan_instructions = kwargs.pop("plan_instructions", self.plan_instructions)
        if "max_tokens" in kwargs:
            kwargs.setdefault("max_new_tokens", kwargs.pop("max_tokens"))
        stop = kwargs.pop("stop", None)
        penalty = kwargs.pop("repetition_penalty", self.repetition_penalty)
        if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or penalty <= 0:
            msg = f"repetition_penalty must be a number > 0, got {penalty!r}"
            raise ValueError(msg)
        options = {**self._default_options(), **kwargs}
        if stop is not None:
            stop = [stop] if isinstance(stop, str) else list(stop)
            options["stop"] = list(dict.fromkeys([*(self.stop or []), *stop]))
        DecodeOptions.from_kwargs(**options)  # unknown or bad options fail here, with the known names
        tool_choice = _tool_choice_name(tool_choice)
        if tool_choice == "none":
            tools = None
        decoder = self.decoder
        engine_messages = to_engine_messages(messages)
        system_text = added_system_text(engine_messages, tools=tools, wants_json=wants_json, schema=described,
                                        options=options, model_name=decoder.model_name,
                                        plan_instructions=plan_instructions)
        prompt = RawPrompt(render_chat(decoder, engine_messages, tools=tools, system_text=system_text))
        if wants_json and not tools:  # the answer is one JSON value under the schema's grammar
            options["constraint"] = cached_json_constraint(decoder.tokenizer, json.dumps(schema or {"type": "object"}))
        if tools:
            from ..grammar import tool_call_constraint

            # Under the grammar a call is always one valid call to a bound tool; "auto" also allows
            # plain text, which then cannot contain a call tag.
            forced = tool_required or tool_choice not in (None, "auto")
            choice = (tool_choice if tool_choice not in (None, "auto") else "required") if forced else "auto"
            # With a response format too (an agent's structured answer), the non-call answer is JSON for it.
            answer_schema = (schema or {"type": "object"}) if wants_json else None
            options["constraint"] = tool_call_constraint(decoder.tokenizer, tools, choice, response_schema=answer_schema)
            if forced and wants_plan(choice, parallel_tool_calls, response_schema=answer_schema):
                # Several calls: planned as titles, each call's arguments a branch (`pbd_core.tool_plan`);
                # branches given for this call are call titles (the LLM's own are prose steps).
                plan = cached_tool_call_plan(decoder.tokenizer, json.dumps(tools), choice)
                options["tool_calls"] = with_penalty(plan, penalty)
                options["branches"] = kwargs.get("branches")
                options["force_plan"] = False
            elif forced:  # the answer is the call itself: no branch plan around it
                options["parallel"] = False
                options["force_plan"] = False
        penalized = with_repetition_penalty(penalty, options.get("constraint"))
        if penalized is not None:
            options["constraint"] = penalized
        return prompt, options, tools is not None

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Iterator[ChatResponse]:
        prompt, options, tools = self._prepare(messages, kwargs)
        decoder = self.decoder

        def gen() -> Iterator[ChatResponse]:
            stream = ResponseStream(model_name=decoder.model_name, tools=tools, output_format=options["output_format"])
            for event in iterate_events(decoder, prompt, options):
                yield from stream.feed(event)

        return gen()

    # ------------------------------------------------------------------ chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream_chat(messages, **kwargs)

    # Undecorated versions: the completion methods delegate here, so one call is one callback event.
    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = None
        for response in self._stream_chat(messages, **kwargs):
            pass
        assert response is not None, "the engine stream always ends with a final chunk"
        return response

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = None
        async for response in await self._astream_chat(messages, **kwargs):
            pass
        assert response is not None, "the engine stream always ends with a final chunk"
        return response

    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        # Loading the weights (first call) and building a tool grammar take seconds: not on the loop.
        if self._decoder is not None and is_remote(self._decoder):  # nothing to load: no thread needed
            prompt, options, tools = self._prepare(messages, kwargs)
        else:  # the first call loads the weights: off the event loop
            prompt, options, tools = await asyncio.to_thread(self._prepare, messages, kwargs)
        decoder = self.decoder

        async def gen() -> ChatResponseAsyncGen:
            stream = ResponseStream(model_name=decoder.model_name, tools=tools, output_format=options["output_format"])
            async for event in aiterate_events(decoder, prompt, options):
                for chunk in stream.feed(event):
                    yield chunk

        return gen()

    # ------------------------------------------------------------------ completion (delegations)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self._chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self._stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self._achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self._astream_chat)(prompt, **kwargs)

    # ------------------------------------------------------------------ tools

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Messages plus the tools in OpenAI form; `chat` renders them through the chat template."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_required": tool_required,
            "tool_choice": tool_choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first call unless parallel tool calls are allowed."""
        if not allow_parallel_tool_calls:
            _keep_first_tool_call(response.message)
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return tool_selections(response, error_on_no_tool_call=error_on_no_tool_call)


    # ------------------------------------------------------------------ structured output

    # With the default program mode, structured prediction decodes the answer as JSON under the
    # output class's schema grammar (as LangChain's ``with_structured_output`` does), not as a
    # function call: measured on 24 prompts with known values (benchmarks/structured_values.py),
    # SmolLM2 got 14/24 right through the schema against 8/24 as a call. Other modes (FUNCTION,
    # LLM, ...) keep LlamaIndex's own programs.

    def _json_messages(
        self, output_cls: type[BaseModel], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None,
        prompt_args: dict[str, Any],
    ) -> tuple[list[ChatMessage], dict[str, Any]]:
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        kwargs = {k: v for k, v in (llm_kwargs or {}).items() if k not in _TOOL_KWARGS}
        kwargs["response_format"] = {"type": "json_schema", "schema": output_cls.model_json_schema()}
        return messages, kwargs

    def _uses_json_schema(self) -> bool:
        return self.pydantic_program_mode == PydanticProgramMode.DEFAULT

    @dispatcher.span
    def structured_predict(
        self, output_cls: type[Model], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if not self._uses_json_schema():
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args))
        messages, kwargs = self._json_messages(output_cls, prompt, llm_kwargs, prompt_args)
        result = _parse_structured(output_cls, self.chat(messages, **kwargs))
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(
        self, output_cls: type[Model], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if not self._uses_json_schema():
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args))
        messages, kwargs = self._json_messages(output_cls, prompt, llm_kwargs, prompt_args)
        result = _parse_structured(output_cls, await self.achat(messages, **kwargs))
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def _structured_stream_call(
        self, output_cls: type[Model], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        if not self._uses_json_schema():
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._json_messages(output_cls, prompt, llm_kwargs, prompt_args)
        chunks = self.stream_chat(messages, **kwargs)

        def gen() -> Generator[Model | FlexibleModel, None, None]:
            current = None
            for chunk in chunks:  # each chunk holds the JSON so far: a partial (flexible) object
                current = process_streaming_objects(chunk, output_cls, cur_objects=current and [current], llm=self)
                yield current

        return gen()

    async def _structured_astream_call(
        self, output_cls: type[Model], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Model | FlexibleModel, None]:
        if not self._uses_json_schema():
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._json_messages(output_cls, prompt, llm_kwargs, prompt_args)
        chunks = await self.astream_chat(messages, **kwargs)

        async def gen() -> AsyncGenerator[Model | FlexibleModel, None]:
            current = None
            async for chunk in chunks:
                current = process_streaming_objects(chunk, output_cls, cur_objects=current and [current], llm=self)
                yield current

        return gen()


# ---------------------------------------------------------------------- helpers

# Function-calling arguments that structured prediction's callers may pass; the JSON path has no tools.
_TOOL_KWARGS = ("tool_required", "tool_choice", "allow_parallel_tool_calls", "parallel_tool_calls", "tools")


def _parse_structured(output_cls: type[Model], response: ChatResponse) -> Model:
    """The output object from a JSON answer; a budget cut that left a required field out says so."""
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)
    except ValidationError as error:
        reason = (response.raw or {}).get("finish_reason") if isinstance(response.raw, dict) else None
        hint = " The answer was cut by max_tokens; raise it." if reason == "length" else ""
        msg = f"the model's JSON does not validate as {output_cls.__name__}: {text!r}.{hint}"
        raise ValueError(msg) from error


def _tool_choice_name(tool_choice: str | dict | None) -> str | None:
    """``"auto"``, ``"required"``, ``"none"`` or a tool name; OpenAI's ``{"function": {"name": ...}}`` form accepted."""
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function", tool_choice)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            msg = f"tool_choice dict must name a function, got {tool_choice!r}"
            raise ValueError(msg)
        return function["name"]
    if tool_choice is not None and not isinstance(tool_choice, str):
        msg = f'tool_choice must be "auto", "required", "none", a tool name or None, got {tool_choice!r}'
        raise ValueError(msg)
    return tool_choice


def _keep_first_tool_call(message: ChatMessage) -> None:
    seen = False
    kept = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            if seen:
                continue
            seen = True
        kept.append(block)
    message.blocks = kept
    if message.additional_kwargs.get("tool_calls"):
        message.additional_kwargs["tool_calls"] = message.additional_kwargs["tool_calls"][:1]
