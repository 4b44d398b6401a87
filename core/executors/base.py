"""What the method's stages ask of an executor, as data (sans-IO).

The stages of the method (`pbd_core.stages`: plan, parallel branches, merge)
never touch a model, a KV cache or a socket. They are a generator that yields
*commands* (the dataclasses below) and receives each command's reply, and
`StreamEvent`s for the caller. A driver runs the commands on an executor:

- `pbd_core.executors.local.LocalExecutor` samples from logits that a
  `TokenTree` computes in this process: `TorchTree` (transformers, tree mask)
  or `LlamaCppTree` (llama.cpp sequences);
- `pbd_core.executors.remote.RemoteExecutor` sends completions to a vLLM or
  SGLang server (the server samples; continuous batching runs the branches
  side by side; prefix caching keeps one copy of the shared prefix).

Because the stages are pure data in, data out, they are written once and are
driven either synchronously or from an event loop (`pbd_core.driver`), which
is how the async adapters reach a remote server without threads.

Contexts are token ids in reading order: an executor keeps whatever part of a
context it already holds (its KV cache, or the server's prefix cache) and
computes only the rest, so the stages can roll back (a plan list replaced by
branches, a recompute merge) simply by asking for a shorter context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

EndReason = Literal["eos", "length", "stop"]


@dataclass(frozen=True)
class StreamEnd:
    """A stream ended on the executor's side (the server stopped it, or its ``max_tokens`` ran out)."""

    reason: EndReason


@dataclass
class Decode:
    """Start sampling the continuation of ``context`` (trunk text). Reply: an opaque stream handle.

    ``stop`` strings are a hint: the stages find stop strings in the text themselves, but a remote
    server can stop early on them (and must then still deliver the stop string's tokens).
    ``constraint`` is a factory of `pbd_core.TokenConstraint` (local) that may carry a ``grammar``
    attribute (lark, llguidance syntax) that a remote executor sends as guided decoding.
    """

    context: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    constraint: Any = None


@dataclass
class NextToken:
    """The next token of a trunk stream. Reply: a token id, or a `StreamEnd`.

    ``budget``: tokens the answer may still sample; a constraint uses it to close its value in time.
    """

    stream: Any
    budget: int


@dataclass
class Prefill:
    """Hold ``context`` before a parallel block (so its cost is charged to the stage before). Reply: None.

    Executors whose prefix cache fills on demand (a server) may do nothing.
    """

    context: list[int]


@dataclass
class DecodeBranches:
    """Start one stream per seed, each continuing ``prefix + seed`` and seeing nothing of its siblings.

    Reply: an opaque handle.
    """

    prefix: list[int]
    seeds: list[list[int]]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    constraint: Any = None
    constraints: list[Any] | None = None
    """One constraint factory per seed (a branch under its own grammar, e.g. each tool call's arguments
    schema); when given it replaces ``constraint``."""

    def constraint_of(self, index: int) -> Any:
        """The constraint factory of branch ``index``."""
        return self.constraint if self.constraints is None else self.constraints[index]


@dataclass
class NextTokens:
    """The next token of each branch in ``live`` (indexes into the seeds), in one step.

    Reply: a list aligned with ``live`` of token ids or `StreamEnd`s. Locally this is one forward pass.
    """

    streams: Any
    live: list[int]
    budget: int


@dataclass
class EndBranch:
    """Branch ``index`` is over: its text is its first ``keep`` body tokens plus ``owed`` (fresh tokens
    for text that ended inside a token). Reply: None. Executors stop feeding it at once."""

    streams: Any
    index: int
    keep: int
    owed: list[int] = field(default_factory=list)


@dataclass
class MergeReuse:
    """Keep every branch's KV and append ``close_ids`` after the longest branch; afterwards the trunk
    stands for ``context`` (the reading-order text). Reply: None. Only in-process executors can."""

    streams: Any
    close_ids: list[int]
    context: list[int]


@dataclass
class Close:
    """The stages are done with a stream (trunk or branches): free what it holds. Reply: None."""

    stream: Any


Command = Union[Decode, NextToken, Prefill, DecodeBranches, NextTokens, EndBranch, MergeReuse, Close]


@dataclass
class ExecutorStats:
    """What an executor measured while serving one answer; the stages charge it to stages."""

    forward_passes: int = 0
    kv_tokens: int = 0
    peak_kv_tokens: int = 0
    server_usage: dict[str, int] | None = None
    """A server's own usage counts, summed over the answer's requests (remote executors only)."""


class ExecutorSession:
    """One answer's state on an executor (a KV cache, or open HTTP streams).

    ``run(command)`` executes a command synchronously; ``arun(command)`` from an event loop.
    """

    stats: ExecutorStats
    supports_reuse_merge: bool = False

    def run(self, command: Command) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    async def arun(self, command: Command) -> Any:
        return self.run(command)

    def close(self) -> None:
        """Free everything (also called when the caller abandons the stream)."""

    async def aclose(self) -> None:
        self.close()


class Executor:
    """Runs the decoding that the stages ask for; one per model (or server).

    Attributes every executor provides: ``tokenizer`` (encode / decode text the same way the model
    does), ``eos_token_ids``, ``context_window``, ``model_name``.
    """

    tokenizer: Any
    eos_token_ids: frozenset[int]
    context_window: int
    model_name: str
    concurrent: bool = False
    """True when concurrent answers need no serialising on the client (a server batches them)."""

    def session(self, options: Any) -> ExecutorSession:  # pragma: no cover - interface
        raise NotImplementedError
