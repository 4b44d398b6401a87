"""Run the engine for an adapter, sync or async.

An in-process torch `ParallelBranchDecoder` batches concurrent answers itself
(`pbd_core.executors.forest`): concurrent calls simply run, each in its own
thread, and meet in the decoder's forward passes. An in-process executor that
serves one answer at a time (llama.cpp, or ``batching=False``) is serialised
with a lock per decoder. The async version of a local decode runs it in a
worker thread and hands events to the event loop through an `asyncio.Queue`,
so a coroutine awaiting tokens never blocks the loop. Leaving the async
iteration early (``break``, cancellation) tells the worker to stop after its
current forward pass, which frees the answer's place in the batch.

A decoder on a server (``ParallelBranchDecoder.from_server``) takes neither
the lock nor a thread: the server batches concurrent callers itself, and the
async path awaits its HTTP streams on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

_locks_guard = threading.Lock()
_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_DONE = object()


def decoder_lock(decoder: Any) -> threading.Lock:
    """The lock that serialises decodes on ``decoder``."""
    with _locks_guard:
        lock = _locks.get(decoder)
        if lock is None:
            lock = _locks[decoder] = threading.Lock()
        return lock


def is_remote(decoder: Any) -> bool:
    """True for a decoder whose executor is a server (it serves concurrent callers itself)."""
    executor = getattr(decoder, "executor", None)
    return bool(getattr(executor, "concurrent", False)) and hasattr(executor, "base_url")


def is_concurrent(decoder: Any) -> bool:
    """True when concurrent decodes need no lock (a server, or a batching local decoder)."""
    return bool(getattr(getattr(decoder, "executor", None), "concurrent", False))


def iterate_events(decoder: Any, prompt: Any, options: dict[str, Any]) -> Iterator[Any]:
    """``decoder.stream(prompt, **options)``, holding the decoder's lock when it runs in process."""
    if is_concurrent(decoder):
        stream = decoder.stream(prompt, **options)
        try:
            yield from stream
        finally:
            stream.close()
        return
    with decoder_lock(decoder):
        stream = decoder.stream(prompt, **options)
        try:
            yield from stream
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


async def aiterate_events(decoder: Any, prompt: Any, options: dict[str, Any]) -> AsyncIterator[Any]:
    """Async `iterate_events`: a server is awaited directly; a local decode runs in a worker thread."""
    if is_remote(decoder):
        stream = decoder.astream(prompt, **options)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: tuple[Any, BaseException | None]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def produce() -> None:
        try:
            events = iterate_events(decoder, prompt, options)
            try:
                for event in events:
                    if stop.is_set():
                        break
                    put((event, None))
            finally:
                events.close()
        except BaseException as error:  # handed to the consumer, re-raised there
            put((None, error))
        else:
            put((_DONE, None))

    worker = threading.Thread(target=produce, name="pbd-decode", daemon=True)
    worker.start()
    try:
        while True:
            event, error = await queue.get()
            if error is not None:
                raise error
            if event is _DONE:
                return
            yield event
    finally:
        stop.set()
        if worker.is_alive():
            # Wait (off the loop) for the current forward pass to end, so no decode
            # outlives its caller: a decode thread alive at interpreter exit aborts it.
            await asyncio.to_thread(worker.join)
