"""`RemoteExecutor`: the stages run on a vLLM or SGLang server, through its completions API.

The method maps onto a serving engine as fork-join, and the server does the
hard part:

- trunk text (intro, plan, conclusion) is one streamed completion of the
  context, whose prompt is sent as token ids, so every request that shares a
  prefix is byte-identical there and the server's prefix cache hits;
- a parallel block is one streamed completion per branch (prompt = prefix +
  that branch's title), all in flight at once: continuous batching decodes one
  token of every branch per engine step, automatic prefix caching keeps one
  physical copy of the prefix;
- the merge is the ``recompute`` one: a completion of prefix + branches in
  reading order + the close marker (only the branch text is new work for the
  server). ``reuse`` would need one token to attend to several sequences,
  which no serving API offers: it is refused with a clear error.

Sampled token ids come back in the stream (vLLM's ``return_token_ids``; EOS
included), so the stages see exactly the server's tokens; a server that sends
only text has it re-encoded (then a branch is exact up to tokenization). The server
stops a branch at ``####`` itself; ``include_stop_str_in_output`` (vLLM) /
``no_stop_trim`` (SGLang) keep the marker's tokens in the stream so the stages
read it as they do locally. Grammar constraints go to the server's own guided
decoding (``structured_outputs.grammar``, llguidance syntax).

A sync session streams each branch from a worker thread (httpx's client is
thread-safe); an async session uses one `httpx.AsyncClient` and tasks, no
threads. Any failure cancels every request of the answer and raises
`RemoteExecutorError` naming the server and the cause: an answer is never
returned partial as if it were complete.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import httpx

from .base import (
    Close,
    Command,
    Decode,
    DecodeBranches,
    EndBranch,
    Executor,
    ExecutorSession,
    ExecutorStats,
    MergeReuse,
    NextToken,
    NextTokens,
    Prefill,
    StreamEnd,
)

TOKEN_ID_PREFIX = "token_id:"


class RemoteExecutorError(RuntimeError):
    """The server could not serve a request: unreachable, unknown model, bad request, timeout."""


# --------------------------------------------------------------------------- wire format


def completion_body(
    model: str,
    prompt: list[int],
    *,
    max_tokens: int,
    stop: list[str],
    options: Any,
    grammar: str | None,
    server: str,
) -> dict[str, Any]:
    """The JSON body of one streamed completion (pure: tested without a server)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
        "skip_special_tokens": False,
    }
    if options.top_k:
        body["top_k"] = options.top_k
    if options.seed is not None:
        body["seed"] = options.seed
    if stop:
        body["stop"] = list(stop)
    if server == "sglang":
        body["no_stop_trim"] = True
        if grammar:
            body["ebnf"] = grammar
    else:
        body["return_token_ids"] = True
        body["include_stop_str_in_output"] = True
        if grammar:
            body["structured_outputs"] = {"grammar": grammar}
    return body


@dataclass
class Chunk:
    """What one stream chunk carried: sampled token ids (or text when the server gives no ids), the end."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    stop_reason: Any = None
    usage: dict[str, Any] | None = None


def parse_sse_line(line: str) -> Chunk | None:
    """One ``data: {...}`` line of a completions stream; None for blank lines and ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    payload = json.loads(data)
    if "error" in payload and "choices" not in payload:
        raise RemoteExecutorError(f"server error in stream: {payload['error']}")
    chunk = Chunk(usage=payload.get("usage"))
    for choice in payload.get("choices") or []:
        chunk.text += choice.get("text") or ""
        if choice.get("token_ids") is not None:  # vLLM's return_token_ids
            chunk.token_ids.extend(int(t) for t in choice["token_ids"])
        else:  # logprobs with return_tokens_as_token_ids: "token_id:123"
            for token in (choice.get("logprobs") or {}).get("tokens") or []:
                if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
                    chunk.token_ids.append(int(token[len(TOKEN_ID_PREFIX) :]))
        if choice.get("finish_reason"):
            chunk.finish = choice["finish_reason"]
            chunk.stop_reason = choice.get("stop_reason")
    return chunk


def end_reason(finish: str | None, stop_reason: Any, constrained: bool) -> StreamEnd:
    """Map the server's finish to how the stages end a stream."""
    if finish == "length":
        return StreamEnd("length")
    if isinstance(stop_reason, str) or constrained:
        return StreamEnd("stop")  # a stop string (its text was delivered) or a completed grammar
    return StreamEnd("eos")


# --------------------------------------------------------------------------- streams


class _TokenQueue:
    """Tokens of one request as they arrive, then its end (or the error that ended it)."""

    def __init__(self, tokenizer: Any, constrained: bool, usage_sink: Callable[[dict[str, Any]], None],
                 eos_ids: frozenset[int] = frozenset()) -> None:
        self.usage_sink = usage_sink
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        self.constrained = constrained
        self.tokens: deque[int | StreamEnd] = deque()
        self.error: BaseException | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: Chunk) -> None:
        ids = chunk.token_ids
        if not ids and chunk.text:  # a server without token ids in the stream: re-encode its text
            ids = list(self.tokenizer(chunk.text, add_special_tokens=False)["input_ids"])
        if chunk.finish == "stop" and chunk.stop_reason is None and ids and not chunk.text:
            if ids[-1] not in self.eos_ids:  # an end-of-sequence token the tokenizer did not name
                ids = ids[:-1]  # (the end appended below says "eos")
        self.tokens.extend(ids)
        if chunk.usage:
            self.usage = chunk.usage
        if chunk.finish:
            self.tokens.append(end_reason(chunk.finish, chunk.stop_reason, self.constrained))


class RemoteSession(ExecutorSession):
    supports_reuse_merge = False

    def __init__(self, executor: "RemoteExecutor", options: Any) -> None:
        self.executor = executor
        self.options = options
        self.stats = ExecutorStats()
        self._open: list[Any] = []
        self._async_client: httpx.AsyncClient | None = None
        self._usage_lock = threading.Lock()

    def _add_usage(self, usage: dict[str, Any]) -> None:
        """Sum the server's usage over the answer's requests (only those that ran to their end report it)."""
        with self._usage_lock:  # sync sessions read their streams in worker threads
            total = self.stats.server_usage or {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                "cached_tokens": 0}
            total["requests"] += 1
            total["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            total["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            total["cached_tokens"] += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self.stats.server_usage = total

    # ------------------------------------------------------------------ bodies

    def _body(self, prompt: list[int], max_tokens: int, stop: list[str], constraint: Any) -> dict[str, Any]:
        if len(prompt) + 1 > self.executor.context_window:
            raise RemoteExecutorError(
                f"{self.executor.base_url}: a request of {len(prompt)} prompt tokens does not fit the server's "
                f"max_model_len of {self.executor.context_window}"
            )
        max_tokens = max(1, min(max_tokens, self.executor.context_window - len(prompt)))
        body = completion_body(
            self.executor.model,
            list(prompt),
            max_tokens=max_tokens,
            stop=stop,
            options=self.options,
            grammar=getattr(constraint, "grammar", None) if constraint else None,
            server=self.executor.server_kind,
        )
        penalty = getattr(constraint, "repetition_penalty", None) if constraint else None
        if penalty is not None:
            body["repetition_penalty"] = penalty  # the server applies it (same definition as Hugging Face's)
        return body

    # ------------------------------------------------------------------ sync

    def run(self, command: Command) -> Any:
        if isinstance(command, NextToken):
            self.stats.forward_passes += 1  # one engine step of this stream, as the stages count them
            return self._next(command.stream)
        if isinstance(command, NextTokens):
            self.stats.forward_passes += 1
            return [self._next(command.streams[i]) for i in command.live]
        if isinstance(command, Decode):
            body = self._body(command.context, command.max_tokens, command.stop, command.constraint)
            return self._start(body, command.constraint is not None)
        if isinstance(command, DecodeBranches):
            return [
                self._start(
                    self._body(command.prefix + seed, command.max_tokens, command.stop, command.constraint_of(index)),
                    command.constraint_of(index) is not None,
                )
                for index, seed in enumerate(command.seeds)
            ]
        if isinstance(command, EndBranch):
            self._cancel(command.streams[command.index])
            return None
        if isinstance(command, Close):
            for stream in command.stream if isinstance(command.stream, list) else [command.stream]:
                self._cancel(stream)
            return None
        if isinstance(command, Prefill):
            return None  # the server's prefix cache fills with the first request
        if isinstance(command, MergeReuse):
            raise RemoteExecutorError(reuse_unsupported(self.executor.base_url))
        raise TypeError(f"unknown command {type(command).__name__}")

    def _start(self, body: dict[str, Any], constrained: bool) -> "_SyncStream":
        stream = _SyncStream(self.executor, body, _TokenQueue(self.executor.tokenizer, constrained, self._add_usage, self.executor.eos_token_ids))
        self._open.append(stream)
        stream.start()
        return stream

    def _next(self, stream: "_SyncStream") -> int | StreamEnd:
        return stream.next()

    def _cancel(self, stream: "_SyncStream") -> None:
        stream.cancel()

    def close(self) -> None:
        for stream in self._open:
            stream.cancel()
        self._open.clear()

    # ------------------------------------------------------------------ async

    async def arun(self, command: Command) -> Any:
        if isinstance(command, NextToken):
            self.stats.forward_passes += 1
            return await command.stream.next()
        if isinstance(command, NextTokens):
            self.stats.forward_passes += 1
            return [await command.streams[i].next() for i in command.live]
        if isinstance(command, Decode):
            body = self._body(command.context, command.max_tokens, command.stop, command.constraint)
            return self._astart(body, command.constraint is not None)
        if isinstance(command, DecodeBranches):
            return [
                self._astart(
                    self._body(command.prefix + seed, command.max_tokens, command.stop, command.constraint_of(index)),
                    command.constraint_of(index) is not None,
                )
                for index, seed in enumerate(command.seeds)
            ]
        if isinstance(command, EndBranch):
            command.streams[command.index].cancel()
            return None
        if isinstance(command, Close):
            for stream in command.stream if isinstance(command.stream, list) else [command.stream]:
                stream.cancel()
            return None
        if isinstance(command, Prefill):
            return None
        if isinstance(command, MergeReuse):
            raise RemoteExecutorError(reuse_unsupported(self.executor.base_url))
        raise TypeError(f"unknown command {type(command).__name__}")

    def _astart(self, body: dict[str, Any], constrained: bool) -> "_AsyncStream":
        if self._async_client is None:
            self._async_client = self.executor.async_client()
        stream = _AsyncStream(
            self.executor, self._async_client, body, _TokenQueue(self.executor.tokenizer, constrained, self._add_usage, self.executor.eos_token_ids)
        )
        self._open.append(stream)
        stream.start()
        return stream

    async def aclose(self) -> None:
        for stream in self._open:
            stream.cancel()
        for stream in self._open:
            await stream.wait()
        self._open.clear()
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None


class _SyncStream:
    """One streamed completion read by a worker thread; tokens reach the stages through a queue."""

    def __init__(self, executor: "RemoteExecutor", body: dict[str, Any], tokens: _TokenQueue) -> None:
        self.executor = executor
        self.body = body
        self.queue = tokens
        self.arrivals: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(target=self._read, name="pbd-remote-stream", daemon=True)
        self._response: httpx.Response | None = None

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            with self.executor.client.stream("POST", "/v1/completions", json=self.body) as response:
                self._response = response
                if response.status_code != 200:
                    response.read()
                    raise self.executor.http_error(response)
                for line in response.iter_lines():
                    if self.cancelled.is_set():
                        return
                    chunk = parse_sse_line(line)
                    if chunk is not None:
                        if chunk.usage:  # the last chunk, often read after the stages moved on
                            self.queue.usage_sink(chunk.usage)
                        self.arrivals.put(chunk)
            self.arrivals.put(None)
        except BaseException as error:  # handed to the stages' thread, raised there
            if not self.cancelled.is_set():
                self.arrivals.put(self.executor.wrap_error(error))

    def next(self) -> int | StreamEnd:
        while not self.queue.tokens:
            try:
                item = self.arrivals.get(timeout=self.executor.timeout)
            except queue.Empty as error:
                raise RemoteExecutorError(
                    f"{self.executor.base_url}: no token within {self.executor.timeout} s (timeout)"
                ) from error
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.queue.tokens.append(StreamEnd("length"))  # a stream that ended without a finish
                break
            self.queue.add(item)
        token = self.queue.tokens[0]
        if not isinstance(token, StreamEnd):
            self.queue.tokens.popleft()
        return token

    def cancel(self) -> None:
        self.cancelled.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing a stream another thread reads: the reader stops either way
                pass


class _AsyncStream:
    """One streamed completion read by a task on the caller's event loop."""

    def __init__(self, executor: "RemoteExecutor", client: httpx.AsyncClient, body: dict[str, Any],
                 tokens: _TokenQueue) -> None:
        self.executor = executor
        self.client = client
        self.body = body
        self.queue = tokens
        self.arrivals: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async with self.client.stream("POST", "/v1/completions", json=self.body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self.executor.http_error(response)
                async for line in response.aiter_lines():
                    chunk = parse_sse_line(line)
                    if chunk is not None:
                        if chunk.usage:
                            self.queue.usage_sink(chunk.usage)
                        self.arrivals.put_nowait(chunk)
            self.arrivals.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self.arrivals.put_nowait(self.executor.wrap_error(error))

    async def next(self) -> int | StreamEnd:
        while not self.queue.tokens:
            try:
                item = await asyncio.wait_for(self.arrivals.get(), timeout=self.executor.timeout)
            except asyncio.TimeoutError as error:
                raise RemoteExecutorError(
                    f"{self.executor.base_url}: no token within {self.executor.timeout} s (timeout)"
                ) from error
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.queue.tokens.append(StreamEnd("length"))
                break
            self.queue.add(item)
        token = self.queue.tokens[0]
        if not isinstance(token, StreamEnd):
            self.queue.tokens.popleft()
        return token

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            try:
                await self._task
            except BaseException:  # cancelled or failed: its error was already handed over
                pass


# --------------------------------------------------------------------------- executor


def reuse_unsupported(base_url: str) -> str:
    return (
        f'merge="reuse" is not available on a server ({base_url}): serving APIs cannot let one token attend to '
        'several sequences; use merge="recompute" (the default), which the server\'s prefix cache makes cheap'
    )


class RemoteExecutor(Executor):
    """Decode on an OpenAI-compatible vLLM or SGLang server.

    Args:
        base_url: the server's root (``http://host:8000``; a trailing ``/v1`` is accepted).
        model: the served model's name; None takes the server's only model.
        api_key: sent as a bearer token.
        tokenizer: a Hugging Face tokenizer or a local folder; None loads it from the model's path
            when this machine can read it, else uses the server's ``/tokenize`` and ``/detokenize``.
        timeout: seconds to wait for a connection or the next token.
    """

    concurrent = True

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        tokenizer: Any = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.base_url = root
        self.timeout = float(timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._async_transport = async_transport
        self.client = httpx.Client(
            base_url=root, headers=self._headers, timeout=httpx.Timeout(self.timeout), transport=transport
        )
        served = self._models()
        names = [m["id"] for m in served]
        if model is None:
            if len(names) != 1:
                raise RemoteExecutorError(f"{root} serves {names}: pass model= to choose one")
            model = names[0]
        if model not in names:
            raise RemoteExecutorError(f"{root} does not serve model {model!r}; it serves {names}")
        card = served[names.index(model)]
        self.model = self.model_name = model
        self.server_kind = self._server_kind()
        self.context_window = int(card.get("max_model_len") or 2048)
        self.tokenizer = _load_tokenizer(tokenizer, card, self)
        self.eos_token_ids = _eos_ids(self.tokenizer, card)
        self.device = None

    # ------------------------------------------------------------------ http helpers

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout),
            transport=self._async_transport,
        )

    def http_error(self, response: httpx.Response) -> RemoteExecutorError:
        try:
            detail = response.json()
            message = (detail.get("error") or {}).get("message") if isinstance(detail.get("error"), dict) else None
            detail = message or detail.get("message") or detail
        except Exception:
            detail = response.text[:500]
        return RemoteExecutorError(f"{self.base_url} answered HTTP {response.status_code}: {detail}")

    def wrap_error(self, error: BaseException) -> BaseException:
        if isinstance(error, RemoteExecutorError):
            return error
        if isinstance(error, httpx.TimeoutException):
            return RemoteExecutorError(f"{self.base_url}: timed out after {self.timeout} s ({error!r})")
        if isinstance(error, httpx.HTTPError):
            return RemoteExecutorError(f"{self.base_url}: {type(error).__name__}: {error}")
        return error

    def _get(self, path: str) -> httpx.Response:
        try:
            return self.client.get(path)
        except httpx.HTTPError as error:
            raise RemoteExecutorError(f"cannot reach the server at {self.base_url}: {error}") from error

    def _models(self) -> list[dict[str, Any]]:
        response = self._get("/v1/models")
        if response.status_code != 200:
            raise self.http_error(response)
        return list(response.json().get("data") or [])

    def _server_kind(self) -> str:
        try:
            if self.client.get("/get_server_info").status_code == 200:
                return "sglang"
        except httpx.HTTPError:
            pass
        return "vllm"

    # ------------------------------------------------------------------ executor

    def session(self, options: Any) -> RemoteSession:
        return RemoteSession(self, options)

    def check_options(self, options: Any) -> None:
        if options.merge == "reuse" and options.parallel:
            raise ValueError(reuse_unsupported(self.base_url))

    def __repr__(self) -> str:
        return f"RemoteExecutor({self.base_url!r}, model={self.model!r}, server={self.server_kind})"


def _load_tokenizer(tokenizer: Any, card: dict[str, Any], executor: RemoteExecutor) -> Any:
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, bytes)) and not hasattr(tokenizer, "__fspath__"):
        return tokenizer
    candidates = [str(tokenizer)] if tokenizer is not None else [card.get("root"), card.get("id")]
    for candidate in candidates:
        if candidate and _is_local_folder(candidate):
            return AutoTokenizer.from_pretrained(candidate)
    if tokenizer is not None:
        raise ValueError(f"tokenizer folder {tokenizer!r} does not exist")
    return ServerTokenizer(executor)


def _is_local_folder(path: str) -> bool:
    import os

    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json")
    )


def _eos_ids(tokenizer: Any, card: dict[str, Any]) -> frozenset[int]:
    ids: set[int] = set()
    value = getattr(tokenizer, "eos_token_id", None)
    if isinstance(value, int):
        ids.add(value)
    root = card.get("root")
    if root and _is_local_folder(root):
        import os

        for name in ("generation_config.json", "config.json"):
            path = os.path.join(root, name)
            if os.path.exists(path):
                with open(path) as f:
                    eos = json.load(f).get("eos_token_id")
                ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return frozenset(ids)


class ServerTokenizer:
    """The tokenizer calls the stages make, answered by the server's ``/tokenize`` and ``/detokenize``.

    Used only when the model's files are not readable here; each call is a round trip (cached).
    """

    def __init__(self, executor: RemoteExecutor) -> None:
        self._executor = executor
        self._decoded: dict[tuple[int, ...], str] = {}
        self.chat_template = "server"  # the server renders chat messages
        self.eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        body = {"model": self._executor.model, "prompt": text, "add_special_tokens": add_special_tokens}
        response = self._executor.client.post("/tokenize", json=body)
        if response.status_code != 200:
            raise self._executor.http_error(response)
        return {"input_ids": list(response.json()["tokens"])}

    def decode(self, ids: Any, skip_special_tokens: bool = True, **_: Any) -> str:
        key = tuple(int(i) for i in ids)
        if key not in self._decoded:
            body = {"model": self._executor.model, "tokens": list(key)}
            response = self._executor.client.post("/detokenize", json=body)
            if response.status_code != 200:
                raise self._executor.http_error(response)
            self._decoded[key] = response.json()["prompt"]
        return self._decoded[key]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False, **_: Any) -> str:
        body = {"model": self._executor.model, "messages": list(messages), "add_generation_prompt": add_generation_prompt}
        if tools:
            body["tools"] = tools
        response = self._executor.client.post("/tokenize", json=body)
        if response.status_code != 200:
            raise self._executor.http_error(response)
        return self.decode(response.json()["tokens"], skip_special_tokens=False)
