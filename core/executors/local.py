"""`LocalExecutor`: the stages' commands run in this process, on a `TokenTree`.

This is where sampling happens for in-process models: logits come from the
tree's forward passes (a transformers model under a tree mask, or llama.cpp
sequences), go through the answer's constraint and sampler, and a token comes
out. The executor keeps, per answer, which context its tree holds:

- ``ids``: the reading-order token ids the trunk stands for;
- ``exact``: how many leading slots are a plain causal copy of ``ids`` (all of
  them, except after a ``reuse`` merge, where the branch slots stand for the
  branch text);
- ``last_logits``: the logits after the last token of ``ids``, if known.

A `Decode` of a context keeps the longest common prefix with ``ids`` and
computes only the rest, so rolling back a plan list or re-encoding branches for
a ``recompute`` merge costs one prefill of the new text, as with a server's
prefix cache. A sampled token is written to the tree only when the next one is
asked for: the token that ends a stream (a stop string, a marker) never is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..masks import TRUNK
from ..sampler import make_sampler
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
from .tree import TokenTree


@dataclass
class _Stream:
    """A trunk stream: the tokens sampled since its `Decode`."""

    max_tokens: int
    constraint: Any = None
    pending: int | None = None  # sampled, not yet written to the tree
    count: int = 0
    finished: bool = False  # the constraint is complete: the next ask ends the stream


@dataclass
class _BranchState:
    branch_id: int
    next_position: int
    constraint: Any = None
    pending: int | None = None
    count: int = 0
    slots: list[int] = field(default_factory=list)  # tree slot of every body token written
    owed: list[int] = field(default_factory=list)
    finished: bool = False
    ended: bool = False


@dataclass
class _Branches:
    """The streams of one parallel block."""

    block_slot: int
    block_position: int
    max_tokens: int
    branches: list[_BranchState]
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # branch index -> logits of its next token
    merged: bool = False


class LocalSession(ExecutorSession):
    supports_reuse_merge = True

    def __init__(self, executor: "LocalExecutor", options: Any) -> None:
        self.executor = executor
        self.tree: TokenTree = executor.new_tree()
        expect = getattr(self.tree, "expect", None)
        if expect is not None:  # a batched tree sizes the answer's KV reservation from its budget
            expect(max_new_tokens=options.max_new_tokens)
        self.stats = ExecutorStats()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        generator = None
        if options.seed is not None and options.temperature > 0:
            generator = torch.Generator(device=executor.device).manual_seed(options.seed)
        self.sample = make_sampler(options.temperature, options.top_p, options.top_k, generator)
        self.ids: list[int] = []
        self.exact = 0
        self.trunk_position = 0
        self.last_logits: torch.Tensor | None = None
        self.next_branch_id = 0

    # ------------------------------------------------------------------ tree access

    def _append(self, ids, branch, position, ctx_end, keep) -> torch.Tensor:
        logits = self.tree.append(ids, branch, position, ctx_end, keep)
        self.stats.forward_passes += 1
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, len(self.tree))
        self.stats.kv_tokens = len(self.tree)
        return logits

    def _crop(self, length: int) -> None:
        self.tree.crop(length)
        self.stats.kv_tokens = len(self.tree)

    def _feed_trunk(self, ids: list[int]) -> None:
        """Append trunk tokens at the next positions; keep the logits of the last one."""
        linear = self.exact == len(self.tree) == len(self.ids)
        positions = list(range(self.trunk_position, self.trunk_position + len(ids)))
        self.last_logits = self._append(ids, [TRUNK] * len(ids), positions, None, None)
        self.trunk_position += len(ids)
        self.ids.extend(ids)
        if linear:
            self.exact = len(self.ids)

    def _hold(self, context: list[int], *, logits: bool = True) -> None:
        """Make the tree hold ``context`` as trunk text (and, with ``logits``, the logits after its end)."""
        assert context, "a context is never empty"
        common = _common_prefix(self.ids, context)
        done = common == len(self.ids) == len(context)
        if done and (self.last_logits is not None or not logits):
            return
        if common < len(self.ids) or done:
            cut = min(common, self.exact, len(context) - 1 if logits else len(context))
            self._crop(cut)
            del self.ids[cut:]
            self.exact = self.trunk_position = cut
            self.last_logits = None
        if len(self.ids) < len(context):
            self._feed_trunk(context[len(self.ids) :])

    def _sample(self, logits: torch.Tensor, constraints: list[Any], budgets: list[int]) -> list[int]:
        """One token per row of ``logits`` [rows, vocab], each row under its own constraint."""
        if any(c is not None for c in constraints):
            logits = logits.clone()
            for row, (constraint, budget) in enumerate(zip(constraints, budgets)):
                if constraint is not None:
                    logits[row] = _mask(constraint, logits[row], budget)
        tokens = self.sample(logits).tolist()
        for constraint, token in zip(constraints, tokens):
            if constraint is not None:
                constraint.advance(token)
        return tokens

    # ------------------------------------------------------------------ commands

    async def arun(self, command: Command) -> Any:
        """From an event loop: the command runs on this answer's own thread, so a forward pass (or the
        wait for the batch's next step) never blocks the loop and concurrent answers can batch."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbd-answer")
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.run, command)

    def close(self) -> None:
        release = getattr(self.tree, "release", None)
        if release is not None:
            release()
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None

    async def aclose(self) -> None:
        if self._worker is not None:
            # Let a command still running on the answer's thread end before freeing its slots.
            worker, self._worker = self._worker, None
            await asyncio.get_running_loop().run_in_executor(None, worker.shutdown, True)
        self.close()

    def run(self, command: Command) -> Any:
        if isinstance(command, NextToken):
            return self._next_token(command)
        if isinstance(command, NextTokens):
            return self._next_tokens(command)
        if isinstance(command, Decode):
            self._hold(list(command.context))
            return _Stream(command.max_tokens, command.constraint() if command.constraint else None)
        if isinstance(command, DecodeBranches):
            return self._start_branches(command)
        if isinstance(command, Prefill):
            return self._hold(list(command.context), logits=False)
        if isinstance(command, EndBranch):
            return self._end_branch(command)
        if isinstance(command, MergeReuse):
            return self._merge_reuse(command)
        if isinstance(command, Close):
            return self._close(command.stream)
        raise TypeError(f"unknown command {type(command).__name__}")

    def _next_token(self, command: NextToken) -> int | StreamEnd:
        stream: _Stream = command.stream
        if stream.finished:
            return StreamEnd(_finish_reason(stream.constraint))
        if stream.pending is not None:
            self._feed_trunk([stream.pending])
            stream.pending = None
        if stream.count >= stream.max_tokens:
            return StreamEnd("length")
        budget = min(command.budget, stream.max_tokens - stream.count)
        [token] = self._sample(self.last_logits[-1:], [stream.constraint], [budget])
        stream.count += 1
        stream.pending = token
        stream.finished = stream.constraint is not None and stream.constraint.is_finished()
        return token

    def _close(self, stream: Any) -> None:
        if isinstance(stream, _Branches) and not stream.merged:
            # The branches were read; the trunk goes on from the block's start.
            self._crop(stream.block_slot)
            self.trunk_position = stream.block_position
            self.last_logits = None

    # ------------------------------------------------------------------ branches

    def _start_branches(self, command: DecodeBranches) -> _Branches:
        # After a reuse merge the prefix includes earlier branches' slots; new branches see them too.
        self._hold(list(command.prefix), logits=False)
        block_slot, block_position = len(self.tree), self.trunk_position
        block = _Branches(block_slot, block_position, command.max_tokens, [])
        ids, branch_ids, positions, keep = [], [], [], []
        for index, seed in enumerate(command.seeds):
            factory = command.constraint_of(index)
            state = _BranchState(
                branch_id=self.next_branch_id,
                next_position=block_position + len(seed),
                constraint=factory() if factory else None,
            )
            self.next_branch_id += 1
            block.branches.append(state)
            ids += seed
            branch_ids += [state.branch_id] * len(seed)
            positions += list(range(block_position, block_position + len(seed)))
            keep.append(len(ids) - 1)
        # Every title in one pass: each sees the prefix and its own title only.
        logits = self._append(ids, branch_ids, positions, block_slot, keep)
        block.rows = {i: logits[i : i + 1] for i in range(len(command.seeds))}
        return block

    def _next_tokens(self, command: NextTokens) -> list[int | StreamEnd]:
        block: _Branches = command.streams
        fed = [i for i in command.live if block.branches[i].pending is not None and not block.branches[i].finished]
        if fed:
            # One forward pass: the newest token of every live branch.
            first_slot = len(self.tree)
            ids, positions = [], []
            for row, i in enumerate(fed):
                b = block.branches[i]
                ids.append(b.pending)
                positions.append(b.next_position)
                b.slots.append(first_slot + row)
                b.pending, b.next_position = None, b.next_position + 1
            logits = self._append(
                ids, [block.branches[i].branch_id for i in fed], positions, block.block_slot, list(range(len(fed)))
            )
            block.rows.update({i: logits[row : row + 1] for row, i in enumerate(fed)})
        replies: list[int | StreamEnd | None] = [None] * len(command.live)
        sampling = []
        for k, i in enumerate(command.live):
            b = block.branches[i]
            if b.finished:
                replies[k] = StreamEnd(_finish_reason(b.constraint))
            elif b.count >= block.max_tokens:
                replies[k] = StreamEnd("length")
            else:
                sampling.append(k)
        if sampling:
            share = max(1, command.budget // max(1, len(sampling)))  # steps left if every branch goes on
            states = [block.branches[command.live[k]] for k in sampling]
            logits = torch.cat([block.rows[command.live[k]] for k in sampling])
            budgets = [min(share, block.max_tokens - b.count) for b in states]
            tokens = self._sample(logits, [b.constraint for b in states], budgets)
            for k, b, token in zip(sampling, states, tokens):
                b.count += 1
                b.pending = token
                b.finished = b.constraint is not None and b.constraint.is_finished()
                replies[k] = token
        return replies

    def _end_branch(self, command: EndBranch) -> None:
        b = command.streams.branches[command.index]
        b.ended = True
        written = len(b.slots)
        if command.keep > written:  # the pending token is part of the text: owe it
            b.owed = ([b.pending] if b.pending is not None else []) + list(command.owed)
        else:
            self.tree.hide(b.slots[command.keep :])
            b.next_position -= written - command.keep  # the owed tokens take the hidden places
            b.slots = b.slots[: command.keep]
            b.owed = list(command.owed)
        b.pending = None

    def _merge_reuse(self, command: MergeReuse) -> None:
        """Keep every branch's KV; write what branches owe and the close marker in one pass."""
        block: _Branches = command.streams
        ids, branch_ids, positions = [], [], []
        for b in block.branches:
            ids += b.owed
            branch_ids += [b.branch_id] * len(b.owed)
            positions += list(range(b.next_position, b.next_position + len(b.owed)))
            b.next_position += len(b.owed)
        ctx_end = [block.block_slot] * len(ids) + [TRUNK] * len(command.close_ids)
        self.trunk_position = max(b.next_position for b in block.branches)
        ids += command.close_ids
        branch_ids += [TRUNK] * len(command.close_ids)
        positions += list(range(self.trunk_position, self.trunk_position + len(command.close_ids)))
        self.trunk_position += len(command.close_ids)
        self.last_logits = self._append(ids, branch_ids, positions, ctx_end, None)
        self.exact = min(self.exact, block.block_slot)  # an earlier reuse merge may end the plain part sooner
        self.ids = list(command.context)
        block.merged = True


class LocalExecutor(Executor):
    """Runs answers in this process over trees made by ``new_tree``.

    Args:
        new_tree: makes an empty `TokenTree` for one answer.
        tokenizer, eos_token_ids, context_window, model_name: the model's.
        device: where sampling happens (the logits' device).
    """

    def __init__(
        self,
        new_tree: Callable[[], TokenTree],
        *,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        context_window: int,
        model_name: str,
        device: torch.device | str = "cpu",
    ) -> None:
        self.new_tree = new_tree
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_window = context_window
        self.model_name = model_name
        self.device = torch.device(device)

    def session(self, options: Any) -> LocalSession:
        return LocalSession(self, options)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _finish_reason(constraint: Any) -> str:
    """How a stream whose constraint is complete ends: ``length`` if the budget forced the completion."""
    return "length" if getattr(constraint, "cut_by_budget", False) else "stop"


def _mask(constraint: Any, logits: torch.Tensor, budget: int) -> torch.Tensor:
    if _takes_budget(type(constraint)):
        return constraint.mask_logits(logits, budget)
    return constraint.mask_logits(logits)  # a constraint written before budgets existed


@functools.lru_cache(maxsize=None)
def _takes_budget(constraint_type: type) -> bool:
    return "budget" in inspect.signature(constraint_type.mask_logits).parameters
