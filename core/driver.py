"""Run the stages' commands on an executor session: synchronously, or from an event loop.

`pbd_core.stages.DecodeRun.events()` yields events for the caller and commands
for the executor (sans-IO). These two drivers are the only place where the two
meet. Abandoning the iteration (``break``, a cancelled task, a disconnected
client) closes the run and frees the session: its KV cache, or the server
requests still in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from .executors.base import (
    Close,
    Decode,
    DecodeBranches,
    EndBranch,
    ExecutorSession,
    MergeReuse,
    NextToken,
    NextTokens,
    Prefill,
)
from .types import StreamEvent

COMMANDS = (Decode, NextToken, Prefill, DecodeBranches, NextTokens, EndBranch, MergeReuse, Close)


def drive(run: Any, session: ExecutorSession) -> Iterator[StreamEvent]:
    """Yield the run's events, executing its commands on ``session`` in this thread."""
    reply = None
    try:
        while True:
            try:
                item = run.send(reply)
            except StopIteration:
                return
            if isinstance(item, COMMANDS):
                reply = session.run(item)
            else:
                reply = None
                yield item
    finally:
        run.close()
        session.close()


async def adrive(run: Any, session: ExecutorSession) -> AsyncIterator[StreamEvent]:
    """Async `drive`: commands are awaited on ``session`` (a remote executor never blocks the loop)."""
    reply = None
    try:
        while True:
            try:
                item = run.send(reply)
            except StopIteration:
                return
            if isinstance(item, COMMANDS):
                reply = await session.arun(item)
            else:
                reply = None
                yield item
    finally:
        run.close()
        await session.aclose()
