"""The method's stages for one answer: plan, parallel branches, merge.

`DecodeRun.events()` is a generator of two kinds of items: `StreamEvent`s for
the caller, and executor commands (`pbd_core.executors.base`), whose replies
are sent back into the generator by a driver (`pbd_core.driver`). The stages
hold everything that is the *method* (reading the title list, budgets, stop
strings and markers, events, reading order, `DecodeResult` and `DecodeStats`)
and nothing that is the *executor* (forward passes, caches, sockets). So the
same code runs on the in-process tree-mask executor, on llama.cpp and on a
vLLM or SGLang server, synchronously or from an event loop.

- `_trunk_run`: sequential decoding of shared text (the intro and plan, or a
  conclusion); watches for ``####`` to start planning;
- `_plan_titles`: lets the model list titles, forcing an elided body after
  each so it writes only the titles;
- `_parallel_block`: starts one stream per title, then asks for one token of
  every live branch per step; a branch leaves the batch the moment it ends;
- `_merge`: makes the branches visible to the conclusion, either by keeping
  their KV (``reuse``, in-process only) or by re-encoding them as one
  sequential text (``recompute``);
- `_sequential_steps`: the baseline: the same titled steps written one after
  another (``parallel=False`` with caller-given branches).

The run keeps ``context``: the token ids, in reading order, that the next
trunk text continues. Rolling back (a title list replaced by branches, a
recompute merge) is just asking the executor for a shorter context.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from .detokenize import TextStream, find_first, held_back
from .executors.base import (
    Close,
    Decode,
    DecodeBranches,
    EndBranch,
    ExecutorStats,
    MergeReuse,
    NextToken,
    NextTokens,
    Prefill,
    StreamEnd,
)
from .options import DecodeOptions
from .plan_format import (
    CLOSE_TEXT,
    ELISION,
    STEP_MARKER,
    branch_separator,
    planned_entry_text,
    read_title,
    render_title,
    seed_text,
    split_sections,
    unread_marker_span,
)
from .prompting import encode
from .repetition import RepetitionGuard, guard_tokens
from .branch_start import NonEmptyBranch
from .plan_gate import NoMarkerFirst
from .titles import DescriptiveTitles
from .types import (
    BranchEndEvent,
    BranchResult,
    BranchStartEvent,
    DecodeResult,
    DecodeStats,
    FinalEvent,
    FinishReason,
    Stage,
    StreamEvent,
    TokenEvent,
)

MAX_TITLE_TOKENS = 48
MAX_BLOCKS = 8

Run = Generator[Any, Any, Any]
"""Yields `StreamEvent`s and executor commands; receives each command's reply."""


@dataclass
class _Branch:
    """A branch being decoded."""

    index: int  # index in the answer (reading order)
    slot: int  # index among the streams of its block
    title: str  # the caller's (or the plan's) own text; the branch text shows `seed_text(title)`
    seed_ids: list[int]
    context_ids: list[int]
    stream: TextStream
    emitted: int = 0
    finish: FinishReason | None = None
    body: str = ""
    body_ids: list[int] = field(default_factory=list)  # the tokens that stand for ``body`` in later contexts
    guard: RepetitionGuard | None = None


@dataclass
class _Segment:
    """A run of trunk tokens sampled by the model (after ``start`` tokens of context)."""

    stream: TextStream
    start: int
    handle: Any = None
    emitted: int = 0
    guard: RepetitionGuard | None = None
    unread_markers: list[int] = field(default_factory=list)
    """Where the model wrote a ``####`` that opened no plan (its title could not be read, or `MAX_BLOCKS`
    blocks were planned already), in ``stream.text``."""


@dataclass
class _Outcome:
    finish: FinishReason | None = None
    titles: list[str] = field(default_factory=list)


class RunState:
    """What a run of one answer keeps whatever its stages: the executor's facts, the stats, the stage clock.

    `DecodeRun` and `pbd_core.tool_plan.ToolCallRun` both extend it, so the state they share (and the
    stage accounting that reads it) is set up in one place and cannot drift apart.

    Args:
        tokenizer, eos_token_ids, context_window: the executor's.
        executor_stats: the executor session's counters (forward passes, KV size), read at stage switches.
        prompt_ids: the rendered prompt.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        context_window: int,
        executor_stats: ExecutorStats,
        prompt_ids: list[int],
        options: DecodeOptions,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids
        self.context_window = context_window
        self.options = options
        self.executor_stats = executor_stats
        self.prompt_ids = list(prompt_ids)
        self.stats = DecodeStats(prompt_tokens=len(prompt_ids))
        self.stops = list(options.stop or [])
        self._stage: Stage = "plan"
        self._stage_started = time.perf_counter()
        # From the session's start: a run that goes on with an answer another run began (a tool-call
        # answer whose plan was dropped) thereby charges the passes before it to its first stage.
        self._stage_passes = 0

    @property
    def budget_left(self) -> int:
        return self.options.max_new_tokens - self.stats.generated_tokens

    def _enter(self, stage: Stage) -> None:
        """Charge the time and forward passes since the last switch to the current stage, then switch."""
        now = time.perf_counter()
        passes = self.executor_stats.forward_passes
        self.stats.stage_seconds[self._stage] += now - self._stage_started
        self.stats.stage_forward_passes[self._stage] += passes - self._stage_passes
        self._stage, self._stage_started, self._stage_passes = stage, now, passes

    def _count(self, n: int = 1) -> None:
        self.stats.generated_tokens += n
        self.stats.stage_tokens[self._stage] += n

    def _final_stats(self) -> DecodeStats:
        """The stats for the result: this run's own, with the executor's counters for the whole answer."""
        self.stats.forward_passes = self.executor_stats.forward_passes
        self.stats.kv_tokens = self.executor_stats.kv_tokens
        self.stats.peak_kv_tokens = self.executor_stats.peak_kv_tokens
        self.stats.server_usage = self.executor_stats.server_usage
        return self.stats


class DecodeRun(RunState):
    """State of one answer. Drive `events()`; its last event carries the `DecodeResult`.

    Args:
        tokenizer, eos_token_ids, context_window, executor_stats, prompt_ids, options: see `RunState`.
        token_constraints: whether the executor applies token constraints (`LocalExecutor`); the
            engine's own ones (``descriptive_titles``) are used only then.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        context_window: int,
        executor_stats: ExecutorStats,
        prompt_ids: list[int],
        options: DecodeOptions,
        token_constraints: bool = False,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            eos_token_ids=eos_token_ids,
            context_window=context_window,
            executor_stats=executor_stats,
            prompt_ids=prompt_ids,
            options=options,
        )
        self.context: list[int] = list(prompt_ids)
        self.parts: list[str] = []  # final text, reading order
        self.answer_ids: list[int] = []
        self.branches: list[BranchResult] = []
        self.blocks = 0
        self.planning = options.parallel and options.branches is None and options.constraint is None
        # A repeat cut from a stream under a grammar would break its text: no guard there.
        self.branch_guard = 0 if options.constraint is not None else guard_tokens(options.repetition_guard)
        self.trunk_guard = 0 if options.constraint is not None else guard_tokens(options.trunk_repetition_guard)
        self.title_constraint = self.planning and options.descriptive_titles and token_constraints
        # A model's list of one title is dropped once and the model answers directly (`pbd_core.plan_gate`).
        self.single_title_retry = self.planning and not options.single_title_plans and token_constraints
        self.branch_constraint = options.constraint
        if options.nonempty_branches and options.constraint is None and token_constraints:
            self.branch_constraint = functools.partial(NonEmptyBranch, tokenizer)
        if options.branches is not None:
            # The caller chose the steps: the conclusion ends where the model starts another one.
            self.stops.append(STEP_MARKER)

    # ------------------------------------------------------------------ helpers

    def _needles(self) -> list[str]:
        return self.stops + ([STEP_MARKER] if self.planning else [])

    def _emit_trunk(self, segment: _Segment, upto: int | None = None, token_id: int | None = None) -> Run:
        text = segment.stream.text
        end = len(text) - held_back(text, self._needles()) if upto is None else upto
        if upto is None and segment.guard is not None:  # a repeat in progress may still be cut
            end = min(end, _held_from(segment.guard, segment.stream))
        # An unread ``####`` goes out as an event of its own, so the readable text can leave it out.
        while segment.unread_markers and segment.unread_markers[0] + len(STEP_MARKER) <= end:
            marker = segment.unread_markers[0]
            span = unread_marker_span(text, marker, end)
            if span is None:
                if upto is None:
                    end = marker  # the rest of a close marker may come with the next token
                    break
                span = len(STEP_MARKER)
            segment.unread_markers.pop(0)
            if marker < segment.emitted:
                continue
            if marker > segment.emitted:
                yield TokenEvent(text[segment.emitted : marker], None, self._stage, None)
            yield TokenEvent(text[marker : marker + span], None, self._stage, None, unread_marker=True)
            segment.emitted = marker + span
        if end > segment.emitted:
            yield TokenEvent(text[segment.emitted : end], None, self._stage, token_id)
            segment.emitted = end

    def _write_trunk(self, text: str, ids: list[int]) -> Run:
        """Forced trunk text (a format marker): part of the answer, not sampled."""
        self.parts.append(text)
        self.answer_ids.extend(ids)
        yield TokenEvent(text, None, self._stage, None)

    # ------------------------------------------------------------------ top level

    def events(self) -> Run:
        forced: list[int] = []
        if self.options.force_plan and self.options.branches is None:
            forced = encode(self.tokenizer, STEP_MARKER)  # the answer starts with a title list
        finish: FinishReason | None = None
        if self.options.branches is not None:
            if self.options.parallel:
                finish = yield from self._parallel_then_merge(list(self.options.branches))
            else:
                finish = yield from self._sequential_steps(list(self.options.branches))
        no_marker_first = False
        while finish is None:
            outcome = yield from self._trunk_run(forced, no_marker_first=no_marker_first)
            planned_by_model, forced, no_marker_first = not forced, [], False
            if outcome.finish is not None:
                finish = outcome.finish
                break
            if len(outcome.titles) == 1 and planned_by_model and self.single_title_retry:
                self.single_title_retry = False  # once per answer
                self.stats.dropped_single_title_plans += 1
                no_marker_first = True  # the model's next choice instead of "####": a direct answer
                continue
            finish = yield from self._parallel_then_merge(outcome.titles)
        self._enter(self._stage)
        yield FinalEvent(self._result(finish))

    def _result(self, finish: FinishReason) -> DecodeResult:
        text = "".join(self.parts)
        branches = self.branches
        if not branches and not self.options.parallel:
            branches = self._sections_of_plain_text(text)
        return DecodeResult(
            text=text,
            branches=branches,
            stats=self._final_stats(),
            finish_reason=finish,
            token_ids=list(self.answer_ids),
            parallel=self.blocks > 0 and self.options.parallel,
        )

    # ------------------------------------------------------------------ trunk

    def _trunk_run(self, forced: list[int] = (), no_marker_first: bool = False) -> Run:
        """Decode shared text until EOS, a stop string, the budget, or a complete title list.

        ``forced`` are tokens the engine writes at the start of this run (a ``####`` that
        opens a plan): they belong to the run's text but are not sampled. ``no_marker_first``:
        the first sampled token may not start with ``#`` (after a dropped one-title list).
        """
        segment = _Segment(TextStream(self.tokenizer, self.context[-4:]), len(self.context))
        if self.trunk_guard:
            segment.guard = RepetitionGuard(self.trunk_guard)
        for token in forced:
            segment.stream.push(token)
        constraint = self.options.constraint
        if self.title_constraint:  # keeps the titles the model plans in this run from starting with a number
            constraint = functools.partial(DescriptiveTitles, self.tokenizer, (self.context + list(forced))[-8:])
        if no_marker_first:
            constraint = functools.partial(NoMarkerFirst, self.tokenizer)
        segment.handle = yield Decode(
            self.context + list(forced),
            max_tokens=max(1, self.budget_left),
            stop=list(self.stops),
            constraint=constraint,
        )
        search_from = 0
        if forced and self.planning:
            outcome = yield from self._plan_titles(segment, 0)
            if outcome is not None:
                return outcome
            segment.unread_markers.append(0)
            search_from = len(STEP_MARKER)
        while True:
            if self.budget_left <= 0 or segment.start + len(segment.stream.token_ids) >= self.context_window:
                return (yield from self._end_segment(segment, len(segment.stream.text), "length"))
            token = yield NextToken(segment.handle, self.budget_left)
            if isinstance(token, StreamEnd):
                return (yield from self._end_segment(segment, len(segment.stream.text), token.reason))
            self._count()
            if token in self.eos_ids:
                return (yield from self._end_segment(segment, len(segment.stream.text), "eos"))
            before = len(segment.stream.text)
            segment.stream.push(token)
            text = segment.stream.text
            hit = find_first(text, self.stops, max(0, before - max(map(len, self.stops), default=0)))
            if hit is not None:
                return (yield from self._end_segment(segment, hit[0], "stop"))
            if segment.guard is not None:
                segment.guard.update(segment.stream.token_ids)
                cut = segment.guard.cut(text, segment.stream.ends)
                if cut is not None:
                    return (yield from self._end_segment(segment, max(cut, segment.emitted), "repetition"))
            if self.planning:
                marker = text.find(STEP_MARKER, max(search_from, before - len(STEP_MARKER)))
                if marker != -1:
                    if self.blocks < MAX_BLOCKS:
                        outcome = yield from self._plan_titles(segment, marker)
                        if outcome is not None:
                            return outcome
                    # Malformed, or no block left to plan: the text stays, keep decoding.
                    segment.unread_markers.append(marker)
                    search_from = marker + len(STEP_MARKER)
                    continue
            yield from self._emit_trunk(segment, token_id=token)

    def _end_unread(self, segment: _Segment, marker: int, reason: FinishReason) -> Run:
        """The answer ended while the title after the ``####`` at ``marker`` was still being written."""
        segment.unread_markers.append(marker)
        return (yield from self._end_segment(segment, len(segment.stream.text), reason))

    def _end_segment(self, segment: _Segment, text_end: int, reason: FinishReason) -> Run:
        yield Close(segment.handle)
        yield from self._close_segment(segment, text_end)
        return _Outcome(reason)

    def _close_segment(self, segment: _Segment, text_end: int) -> Run:
        """Make the segment's text (up to ``text_end``) final and emit what was held back."""
        stream = segment.stream
        yield from self._emit_trunk(segment, upto=text_end)
        self.parts.append(stream.text[:text_end])
        kept = stream.token_ids[: stream.tokens_before(text_end)]
        self.answer_ids.extend(kept)
        self.context.extend(kept)

    def _plan_titles(self, segment: _Segment, marker: int) -> Run:
        """The model wrote ``####``: read its title list, or give up and leave the text alone.

        Returns an `_Outcome` with the titles when a list was read (or with a finish
        reason if the answer ended while reading), and ``None`` when the first entry
        is malformed: decoding then simply continues sequentially with the model's
        own tokens (the segment's stream stays open), so nothing is lost.
        """
        stream = segment.stream
        after_marker = marker + len(STEP_MARKER)
        # Read the first title with the model's own tokens (nothing is rolled back yet).
        read = read_title(stream.text[after_marker:])
        for _ in range(MAX_TITLE_TOKENS):
            if read.status != "pending":
                break
            if self.budget_left <= 0:
                return (yield from self._end_unread(segment, marker, "length"))
            token = yield NextToken(segment.handle, self.budget_left)
            if isinstance(token, StreamEnd):
                return (yield from self._end_unread(segment, marker, token.reason))
            self._count()
            if token in self.eos_ids:
                return (yield from self._end_unread(segment, marker, "eos"))
            stream.push(token)
            read = read_title(stream.text[after_marker:])
        if read.status != "title":
            return None
        yield Close(segment.handle)

        # Commit: the text before the marker is final; the list itself is never part of the context.
        yield from self._emit_trunk(segment, upto=marker)
        keep = stream.tokens_before(marker)
        leftover = stream.text[stream.ends[keep - 1] if keep else 0 : marker]
        self.parts.append(stream.text[:marker])
        leftover_ids = encode(self.tokenizer, leftover) if leftover else []
        self.answer_ids.extend(stream.token_ids[:keep] + leftover_ids)
        self.context.extend(stream.token_ids[:keep] + leftover_ids)

        titles = [read.title]
        listed = list(self.context) + self._plan_ids(titles) + encode(self.tokenizer, STEP_MARKER)
        while len(titles) < self.options.max_branches and self.budget_left > 0:
            titled = None
            if self.title_constraint:  # the new title may not start with a number
                titled = functools.partial(DescriptiveTitles, self.tokenizer, listed[-8:])
            handle = yield Decode(listed, max_tokens=min(MAX_TITLE_TOKENS, self.budget_left), constraint=titled)
            entry = TextStream(self.tokenizer, listed[-4:])
            read = read_title("")
            for _ in range(MAX_TITLE_TOKENS):
                if self.budget_left <= 0:
                    break
                token = yield NextToken(handle, self.budget_left)
                if isinstance(token, StreamEnd):
                    break
                self._count()
                if token in self.eos_ids:
                    break
                entry.push(token)
                read = read_title(entry.text)
                if read.status != "pending":
                    break
            yield Close(handle)
            if read.status != "title" or read.title in titles:
                break  # "%%%%" closed the list, the entry is malformed, or the model repeats itself
            titles.append(read.title)
            # The model's own title tokens are replaced by the canonical entry.
            listed += self._plan_entry_ids(read.title, first=False) + encode(self.tokenizer, STEP_MARKER)
        return _Outcome(None, titles)

    def _plan_entry_ids(self, title: str, first: bool) -> list[int]:
        """Tokens of one title-list entry, as the plan stage writes them: the first entry with its
        ``####``, a later one after the ``####`` that ended the entry before (encoded on its own)."""
        if first:
            return encode(self.tokenizer, planned_entry_text(title))
        return encode(self.tokenizer, f"{render_title(title)}:{ELISION}")

    def _plan_ids(self, titles: list[str]) -> list[int]:
        """The title list (``####<title>: ...`` per title) as the plan stage tokenizes it, so a model's
        own plan, already in the cache, is reused as it is (``plan_in_view``)."""
        ids = self._plan_entry_ids(titles[0], first=True)
        marker = encode(self.tokenizer, STEP_MARKER)
        for title in titles[1:]:
            ids += marker + self._plan_entry_ids(title, first=False)
        return ids

    # ------------------------------------------------------------------ parallel block

    def _start_branches(self, titles: list[str], prefix: list[int]) -> Run:
        branches = []
        for slot, title in enumerate(titles):
            branches.append((yield from self._start_branch(title, prefix, slot)))
        return branches

    def _start_branch(self, title: str, prefix: list[int], slot: int = 0) -> Run:
        """A step titled ``title`` after ``prefix`` (a branch of a block, or a sequential step): its seed,
        its guard, and the events that open it."""
        seed = encode(self.tokenizer, seed_text(title))
        branch = _Branch(
            index=len(self.branches) + slot,
            slot=slot,
            title=title,
            seed_ids=seed,
            context_ids=prefix + seed,
            stream=TextStream(self.tokenizer, seed),
            guard=RepetitionGuard(self.branch_guard, labels=self.options.repeated_label_guard)
            if self.branch_guard else None,
        )
        yield BranchStartEvent(branch.index, title, self.blocks)
        yield TokenEvent(seed_text(title), branch.index, "parallel", None)
        return branch

    def _parallel_then_merge(self, titles: list[str]) -> Run:
        prefix = list(self.context)
        if self.options.plan_in_view:  # every branch sees the whole title list before its own title
            prefix += self._plan_ids(titles)
        if self.options.exemplar_step and len(titles) > 2:
            # The first step is written alone; the others see it as a worked example (what a step of
            # this task looks like), as every step after the first does in sequential decoding.
            self._enter("parallel")
            self.context = prefix
            yield from self._sequential_step(titles[0])
            prefix, titles = list(self.context), titles[1:]
        yield Prefill(prefix)  # the prompt, or the text before the list: charged to the stage before
        self._enter("parallel")
        branches = yield from self._start_branches(titles, prefix)
        handle = yield DecodeBranches(
            prefix,
            [b.seed_ids for b in branches],
            max_tokens=self.options.max_branch_tokens,
            stop=[STEP_MARKER, *self.stops],
            constraint=self.branch_constraint,
        )
        live = list(branches)
        while live:
            self.stats.max_live_branches = max(self.stats.max_live_branches, len(live))
            if self.budget_left < len(live):  # not enough budget for one more token of every branch
                for b in live:
                    yield from self._end_branch(handle, b, "length", len(b.stream.text))
                break
            replies = yield NextTokens(handle, [b.slot for b in live], self.budget_left)
            for b, token in zip(live, replies):
                if isinstance(token, StreamEnd):
                    yield from self._end_branch(handle, b, token.reason, len(b.stream.text))
                    continue
                self._count()
                yield from self._advance_branch(handle, b, token)
            live = [b for b in live if b.finish is None]
        for b in branches:
            self._record_branch(b, block=self.blocks)
        self.blocks += 1
        return (yield from self._merge(handle, branches, prefix))

    def _advance_branch(self, handle: Any, b: _Branch, token: int) -> Run:
        """Take one sampled token into branch ``b``; end the branch when its text says so."""
        if token in self.eos_ids:
            b.stream.token_ids.append(token)
            yield from self._end_branch(handle, b, "eos", len(b.stream.text))
            return
        before = len(b.stream.text)
        b.stream.push(token)
        text = b.stream.text
        needles = [STEP_MARKER] + self.stops
        hit = find_first(text, needles, max(0, before - max(map(len, needles))))
        if hit is not None:
            yield from self._end_branch(handle, b, "end_marker" if hit[1] == STEP_MARKER else "stop", hit[0])
            return
        if b.guard is not None:
            b.guard.update(b.stream.token_ids)
            cut = b.guard.cut(text, b.stream.ends)
            if cut is not None:
                yield from self._end_branch(handle, b, "repetition", max(cut, b.emitted))
                return
        if len(b.stream.token_ids) >= self.options.max_branch_tokens or (
            len(b.context_ids) + len(b.stream.token_ids) >= self.context_window
        ):
            yield from self._end_branch(handle, b, "length", len(text))
            return
        end = len(text) - held_back(text, needles)
        if b.guard is not None:  # a repeat in progress may still be cut
            end = min(end, _held_from(b.guard, b.stream))
        if end > b.emitted:
            yield TokenEvent(text[b.emitted : end], b.index, "parallel", token)
            b.emitted = end

    def _end_branch(self, handle: Any, b: _Branch, reason: FinishReason, text_end: int) -> Run:
        """End ``b``; work out which tokens stand for exactly ``b.body`` from now on.

        A marker or stop string can span tokens: tokens after the body end are
        dropped, and any text of the body inside the ending token is re-encoded.
        """
        b.finish = reason
        b.body = b.stream.text[:text_end]
        sampled = b.stream.token_ids
        if reason == "length":
            keep, owed = len(sampled), []
        elif reason == "eos":
            keep, owed = len(sampled) - 1, []
        else:
            keep = b.stream.tokens_before(text_end)
            leftover = b.stream.text[b.stream.ends[keep - 1] if keep else 0 : text_end]
            owed = encode(self.tokenizer, leftover) if leftover else []
        b.body_ids = sampled[:keep] + owed
        if handle is not None:  # a parallel block (a sequential step is simply closed)
            yield EndBranch(handle, b.slot, keep, owed)
        tail = b.body[b.emitted :] + branch_separator(b.body)
        if tail:
            yield TokenEvent(tail, b.index, "parallel", None)
        b.emitted = text_end
        yield BranchEndEvent(b.index, reason, b.body)

    def _record_branch(self, b: _Branch, block: int) -> None:
        self.branches.append(
            BranchResult(
                title=b.title,
                text=b.body,
                token_ids=list(b.stream.token_ids),
                context_ids=b.context_ids,
                finish_reason=b.finish or "length",
                block=block,
            )
        )
        self.parts.append(seed_text(b.title) + b.body + branch_separator(b.body))
        self.answer_ids.extend(b.seed_ids + b.stream.token_ids[: b.stream.tokens_before(len(b.body))])

    # ------------------------------------------------------------------ merge

    def _merge(self, handle: Any, branches: list[_Branch], prefix: list[int]) -> Run:
        self._enter("merge")
        if self.budget_left <= 0:
            yield Close(handle)
            return "length"
        close_ids = encode(self.tokenizer, CLOSE_TEXT)
        text = "".join(seed_text(b.title) + b.body + branch_separator(b.body) for b in branches) + CLOSE_TEXT
        self.context = prefix + encode(self.tokenizer, text)
        if self.options.merge == "reuse":
            # Keep every branch's KV; the conclusion sees them at their own positions.
            yield MergeReuse(handle, close_ids, list(self.context))
        yield Close(handle)  # recompute: the next trunk decode re-encodes the branches as sequential text
        yield from self._write_trunk(CLOSE_TEXT, close_ids)
        return None

    # ------------------------------------------------------------------ sequential baseline

    def _sequential_steps(self, titles: list[str]) -> Run:
        """The paper's baseline: the same titled steps, one after another, each seeing the ones before.

        With ``plan_in_view`` the title list comes first, as in the parallel block (not part of the text).
        """
        self._enter("parallel")
        if self.options.plan_in_view:
            self.context = self.context + self._plan_ids(titles)
        for title in titles:
            yield from self._sequential_step(title)
        self._enter("merge")
        if self.budget_left <= 0:
            return "length"
        close_ids = encode(self.tokenizer, CLOSE_TEXT)
        self.context = self.context + close_ids
        yield from self._write_trunk(CLOSE_TEXT, close_ids)
        return None

    def _sequential_step(self, title: str) -> Run:
        """Write one titled step after ``self.context`` and append it there (a step of the baseline, or
        the worked example of ``exemplar_step``)."""
        b = yield from self._start_branch(title, self.context)
        handle = yield Decode(
            b.context_ids,
            max_tokens=self.options.max_branch_tokens,
            stop=[STEP_MARKER, *self.stops],
            constraint=self.branch_constraint,
        )
        while b.finish is None:
            if self.budget_left <= 0:
                yield from self._end_branch(None, b, "length", len(b.stream.text))
                break
            token = yield NextToken(handle, self.budget_left)
            if isinstance(token, StreamEnd):
                yield from self._end_branch(None, b, token.reason, len(b.stream.text))
                break
            self._count()
            yield from self._advance_branch(None, b, token)
        yield Close(handle)
        self.context = b.context_ids + b.body_ids
        self._record_branch(b, block=self.blocks)

    def _sections_of_plain_text(self, text: str) -> list[BranchResult]:
        """Steps the model wrote on its own in plain decoding, for step-by-step comparison."""
        _, sections, _ = split_sections(text)
        results = []
        for title, body in sections:
            results.append(
                BranchResult(
                    title=title,
                    text=body,
                    token_ids=encode(self.tokenizer, body),
                    context_ids=[],
                    finish_reason="end_marker",
                )
            )
        return results


def _held_from(guard: RepetitionGuard, stream: TextStream) -> int:
    """Where a stream's text may still be cut by its repetition guard (its end when nothing is held)."""
    held = guard.held_from(stream.text, stream.ends)
    return len(stream.text) if held is None else held
