"""`create_app(decoder)`: the HTTP side of `pbd serve` (FastAPI; SSE for streams).

The app only translates (`protocol`) and runs: every decode goes through
`pbd_integrations.runner.aiterate_events`, which runs it off the event loop. The
engine batches concurrent requests itself (`pbd_core.executors.forest`): every
forward pass carries the next token of every live stream of every request, and
``/health`` reports the batch (answers decoding, waiting, streams, cache slots).

Lifecycle of a request:

1. parse and translate it (off the loop: rendering and compiling a grammar take time);
   bad input is a 4xx with OpenAI's error JSON, the field named;
2. start the decode and wait for its first event, so that an error the engine finds
   before decoding is still a 4xx (a bad option) or a 5xx (a failure), not a broken stream;
3. stream the chunks as server-sent events, or add them up into one JSON response.

A client that goes away stops its decode: the event generator is closed as soon as the
disconnect is seen (a stream's send fails or Starlette's disconnect listener fires; a
non-streamed request watches its connection while it waits). A failure mid-stream ends
the stream with an ``{"error": ...}`` event, as vLLM does; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..runner import aiterate_events
from . import protocol
from .protocol import APIError, error_body

logger = logging.getLogger("pbd.serve")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# --------------------------------------------------------------------------- the served model


class ServedModel:
    """The one model this server decodes with, and the names a request may call it by."""

    def __init__(self, decoder: Any, name: str | None = None) -> None:
        self.decoder = decoder
        self.name = name or str(decoder.model_name)
        self.aliases = {self.name, "default", str(getattr(decoder, "source", "") or self.name)}
        self.created = int(time.time())

    def check(self, requested: str | None) -> None:
        if requested is not None and requested not in self.aliases:
            raise APIError(
                f"The model `{requested}` does not exist; this server serves {self.name!r}",
                param="model",
                status=404,
                code="model_not_found",
            )

    def root(self) -> str | None:
        """A local folder holding the tokenizer (and config), for clients on this machine."""
        tokenizer = self.decoder.tokenizer
        model = getattr(self.decoder, "model", None)
        candidates = [getattr(tokenizer, "name_or_path", None),
                      getattr(getattr(model, "config", None), "_name_or_path", None)]
        for folder in candidates:
            if folder and os.path.isdir(folder) and any(
                os.path.exists(os.path.join(folder, name)) for name in _TOKENIZER_FILES
            ):
                return os.path.abspath(folder)
        return None

    def card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "pbd",
            "root": self.root(),
            "parent": None,
            "max_model_len": int(self.decoder.context_window),
            "pbd": {"source": str(getattr(self.decoder, "source", self.name)),
                    "dtype": str(getattr(self.decoder, "mask_dtype", None))},
        }


# --------------------------------------------------------------------------- responses


class _EventStreamResponse(StreamingResponse):
    """A streaming response that always runs ``on_close``, even when the stream never started.

    Starlette cancels the sending task on a disconnect; the generator of a stream
    that was never iterated would not run its ``finally``, so the decode is closed here.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                await self._on_close()


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _engine_failure(error: BaseException) -> APIError:
    return APIError(f"the engine failed: {type(error).__name__}: {error}", status=500)


class _Decodes:
    """Decodes started and not yet closed (reported by ``/health``)."""

    def __init__(self) -> None:
        self.active = 0
        self.served = 0


# --------------------------------------------------------------------------- the app


def create_app(decoder: Any, *, model_name: str | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``decoder`` (a `pbd_core.ParallelBranchDecoder`).

    Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
    ``GET /health``, and vLLM's ``POST /tokenize`` and ``POST /detokenize``.

    Args:
        decoder: the engine; concurrent requests are batched by it (or serialised by
            `pbd_integrations.runner` when it serves one answer at a time, as llama.cpp does).
        model_name: the id clients use (default: the decoder's model name; ``"default"``
            and the decoder's source name are accepted too).
    """
    served = ServedModel(decoder, model_name)
    decodes = _Decodes()
    app = FastAPI(title="pbd serve", description="OpenAI-compatible parallel-branch decoding", version="0.1.0")
    app.state.served = served
    app.state.decodes = decodes

    # ------------------------------------------------------------------ errors

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(protocol.validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        return JSONResponse(error_body(f"{detail}: {request.method} {request.url.path}", type=kind),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s", request.url.path)
        return _error_response(_engine_failure(error))

    # ------------------------------------------------------------------ decoding

    async def decode(request: Request, call: protocol.EngineCall, chunks: Any, stream: bool, prompt_param: str) -> Response:
        """Run one engine call; stream its chunks or return their aggregate."""
        events = aiterate_events(decoder, call.prompt, call.options)
        decodes.active += 1
        closed = False

        async def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            try:
                await events.aclose()
            finally:
                decodes.active -= 1
                decodes.served += 1

        try:
            first = await events.__anext__()
        except BaseException as error:
            await close()
            if isinstance(error, ValueError):  # the engine's own validation: the request is at fault
                raise protocol.engine_error(error, prompt_param=prompt_param) from error
            if isinstance(error, Exception):  # StopAsyncIteration included: a decode must end with a result
                raise _engine_failure(error) from error
            raise
        if stream:
            return _EventStreamResponse(_sse(first, events, chunks), on_close=close)
        try:
            result = await _collect(first, events, chunks, request)
        finally:
            await close()
        if result is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: protocol.ChatCompletionRequest, request: Request) -> Response:
        served.check(body.model)
        call = await asyncio.to_thread(protocol.chat_call, decoder, body)
        include_usage = not body.stream or bool(body.stream_options and body.stream_options.include_usage)
        chunks = protocol.ChatChunks(served.name, parse_tools=call.parse_tools, include_usage=include_usage,
                                     output_format=body.output_format or "readable")
        return await decode(request, call, chunks, body.stream, "messages")

    @app.post("/v1/completions")
    async def completions(body: protocol.CompletionRequest, request: Request) -> Response:
        served.check(body.model)
        call = await asyncio.to_thread(protocol.completion_call, decoder, body)
        include_usage = not body.stream or bool(body.stream_options and body.stream_options.include_usage)
        chunks = protocol.CompletionChunks(
            served.name, decoder.tokenizer, sampled=call.sampled, stops=call.stops, context_ids=call.prompt_ids,
            return_token_ids=body.return_token_ids, include_stop=body.include_stop_str_in_output,
            include_usage=include_usage, output_format=body.output_format or "readable",
        )
        return await decode(request, call, chunks, body.stream, "prompt")

    # ------------------------------------------------------------------ the model

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        served.check(model_id)
        return served.card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        report = {"status": "ok", "model": served.name, "active_decodes": decodes.active, "served": decodes.served}
        scheduler = getattr(decoder, "scheduler", None)
        if scheduler is not None:
            report["batch"] = scheduler.stats()
        return report

    @app.post("/tokenize")
    async def tokenize(body: protocol.TokenizeRequest) -> dict[str, Any]:
        served.check(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError("give exactly one of prompt and messages", param="prompt")
        if body.messages is not None:
            text = decoder.render_messages(body.messages, tools=body.tools,
                                           add_generation_prompt=body.add_generation_prompt)
            special = bool(body.add_special_tokens)
        else:
            text, special = body.prompt, body.add_special_tokens is not False
        tokens = list(decoder.tokenizer(text, add_special_tokens=special)["input_ids"])
        return {"tokens": tokens, "count": len(tokens), "max_model_len": int(decoder.context_window)}

    @app.post("/detokenize")
    async def detokenize(body: protocol.DetokenizeRequest) -> dict[str, Any]:
        served.check(body.model)
        try:
            text = decoder.tokenizer.decode(body.tokens, skip_special_tokens=False)
        except Exception as error:
            raise APIError(f"tokens cannot be decoded: {error}", param="tokens") from error
        return {"prompt": text}

    return app


# --------------------------------------------------------------------------- helpers


async def _sse(first: Any, events: AsyncIterator[Any], chunks: Any) -> AsyncIterator[str]:
    """Server-sent events of one decode, ending with ``[DONE]`` (or an error event, then ``[DONE]``)."""
    try:
        for chunk in getattr(chunks, "start", lambda: [])():
            yield protocol.sse(chunk)
        for chunk in chunks.feed(first):
            yield protocol.sse(chunk)
        async for event in events:
            for chunk in chunks.feed(event):
                yield protocol.sse(chunk)
    except Exception as error:  # the engine failed mid-stream: say so in the stream, as vLLM does
        logger.exception("decode failed mid-stream")
        yield protocol.sse(_engine_failure(error).body())
    yield protocol.sse("[DONE]")


async def _collect(first: Any, events: AsyncIterator[Any], chunks: Any, request: Request) -> dict[str, Any] | None:
    """Add a decode's chunks up into one response; None if the client disconnects first."""

    async def consume() -> list[dict[str, Any]]:
        out = list(getattr(chunks, "start", lambda: [])()) + chunks.feed(first)
        async for event in events:
            out += chunks.feed(event)
        return out

    task = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            return None
        try:
            out = task.result()
        except Exception as error:
            raise _engine_failure(error) from error
        aggregate = protocol.aggregate_chat if isinstance(chunks, protocol.ChatChunks) else protocol.aggregate_completion
        return aggregate(out)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (the body was read already)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
