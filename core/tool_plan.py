"""Parallel tool calls: an answer made of independent tool calls, decoded as branches.

When a model is to call several tools at once (the weather in three cities,
four records to look up), no call's arguments depend on another's. With a
`ToolCallPlan` in `DecodeOptions.tool_calls` the answer is decoded as:

1. **Plan.** The model lists the calls, under a grammar
   (`ToolCallPlan.listing`), in a compact form the adapters choose; theirs is a
   Python list of calls with the arguments that tell them apart (usually one)::

       [get_weather(city="Paris"), get_weather(city="London"), get_weather(city="Tokyo")]

   and ends the list itself (``]``), which a model does where it would stop
   writing calls. With several tools bound, the model first names the first
   call's tool in its own call format (`ToolCallPlan.lead`), where it picks among
   tools as it was trained to, and the list starts with that tool.
   `ToolCallPlan.read_list` turns the list into titles, ``"<tool>: <hint>"``
   (``get_weather: city="Paris"``), or just ``"<tool>"``. Caller-given
   ``branches`` are such titles and skip planning.
2. **Calls.** One branch per title, all decoded together: one token of every
   call per forward pass. A branch sees the prompt, its own title and the start
   of its call in the model's own format (`ToolCallPlan.call_text`, for
   Qwen2.5's ``<tool_call>\\n{"name": "get_weather", "arguments": ``); the title
   is written as a branch's always is (``####get_weather： city="Paris":``,
   `pbd_core.plan_format.seed_text`). It writes the arguments under that tool's
   schema grammar (`ToolCallPlan.arguments`, one grammar per branch).
3. **No merge.** The answer ends after the calls. Its text is the calls in the
   planned order, each exactly as the model writes a call, joined as the model
   joins several (`ToolCallPlan.separator`): the text a chat template writes for
   the same calls in the history, so the next turn reads as the model's own.

The answer's text holds the calls only (no plan, no titles), so stream events
carry it as ordinary text (``branch=None``), in reading order: the first call
as it is written, each later one as soon as the ones before it are done.
`DecodeResult.branches` has one entry per call (title, arguments text, tokens).

Two cases are decoded exactly as without a plan, by the ordinary run
(`pbd_core.stages.DecodeRun`):

- **one planned call**: the plan is dropped and the call is decoded under
  `DecodeOptions.constraint` (for the adapters: one call under the tool-call
  grammar), so a single call is the same call, token for token (the plan's
  tokens still count against ``max_new_tokens``);
- **``parallel=False``**: the calls are written one after another under
  `ToolCallPlan.sequential` (several calls in the model's format): the baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .constraints import min_tokens_to_finish
from .detokenize import TextStream, find_first, held_back
from .executors.base import Close, Decode, DecodeBranches, EndBranch, ExecutorStats, NextToken, NextTokens, Prefill, StreamEnd
from .options import DecodeOptions
from .plan_format import STEP_MARKER, TITLE_COLON, render_title
from .prompting import encode
from .stages import DecodeRun, RunState
from .types import BranchResult, DecodeResult, DecodeStats, FinalEvent, FinishReason, TokenEvent

MAX_ENTRY_TOKENS = 32
"""Tokens of the list allowed per call (what the model writes for one call in the list, at most)."""

MAX_NAME_TOKENS = 16
"""Most tokens of the first call's tool name (`ToolCallPlan.lead_name`)."""

Factory = Callable[[], Any]


@dataclass(frozen=True)
class ToolCallPlan:
    """How to decode an answer that is one or more tool calls (see the module docstring).

    Built by the adapters (`pbd_integrations.parallel_tools.tool_call_plan`), which own the grammars
    and the model's call format; the engine only runs it.
    """

    tools: tuple[str, ...]
    """Names of the tools the calls may use."""
    listing: Factory
    """Constraint of the list of calls the model writes (after `preamble`); it ends the list itself."""
    read_list: Callable[[str], list[str]]
    """Titles (``"<tool>: <hint>"``) of the calls in the list text, in order (of its complete entries, if
    the list was cut short)."""
    arguments: Mapping[str, Factory]
    """Per tool name: the constraint of its arguments (one JSON object for the tool's schema)."""
    call_text: Callable[[str], tuple[str, str]]
    """Per tool name: the model's own text before and after the arguments of one call."""
    separator: str = "\n"
    """Between two calls, as the model writes several."""
    sequential: Factory | None = None
    """Constraint for ``parallel=False``: calls written one after another (None: `DecodeOptions.constraint`)."""
    preamble: str = ""
    """Text the engine writes before the list (after the prompt, in the answer's turn); like the list
    itself it is seen only while planning, never by the calls and never part of the answer."""
    lead: str = ""
    """The model's own call format up to a tool's name (``<tool_call>\\n{"name": "``): with `lead_name`,
    the model first names the first call's tool there, where it chooses among tools as it was trained to,
    and the list then starts with that tool (`listing_after`)."""
    lead_name: Factory | None = None
    """Constraint of that name (one of the tools); None: the list starts on its own (one tool bound)."""
    listing_after: Callable[[str], tuple[str, Factory]] | None = None
    """For the first call's tool: the start of the list the engine writes (``[get_weather(``) and the
    constraint of the rest of the list."""

    def title_parts(self, title: str) -> tuple[str, str]:
        """``(tool, hint)`` of a title ``"<tool>: <hint>"`` or ``"<tool>"`` (``：`` also separates).

        Raises:
            ValueError: the title does not start with a bound tool's name.
        """
        text = title.strip()
        for name in sorted(self.tools, key=len, reverse=True):
            if text == name:
                return name, ""
            if text.startswith(name) and text[len(name)] in (":", TITLE_COLON):
                return name, text[len(name) + 1 :].strip()
        raise ValueError(
            f"tool-call title {title!r} must be '<tool>' or '<tool>: <hint>' with a tool among {list(self.tools)}"
        )


def title_of(tool: str, hint: str) -> str:
    """The title of a call: ``"<tool>: <hint>"``, or the tool alone without a hint."""
    return f"{tool}: {hint}" if hint else tool


@dataclass
class _Call:
    index: int
    title: str
    tool: str
    seed_ids: list[int]
    context_ids: list[int]
    prefix: str
    suffix: str
    stream: TextStream
    finish: FinishReason | None = None
    body: str = ""

    def text(self, separator: str) -> str:
        """The call as it stands in the answer (a separator before every call but the first)."""
        return (separator if self.index else "") + self.prefix + self.body + (self.suffix if self.finish else "")


class _AfterPlan(DecodeRun):
    """The ordinary run of an answer whose plan `ToolCallRun` dropped: its result also counts the plan.

    Adding the plan's cost in `_result` (rather than by watching the events for the `FinalEvent`) lets
    `ToolCallRun._ordinary` simply ``yield from`` this run: one loop less that mirrors the driver's.
    """

    def __init__(self, plan_stats: DecodeStats, **run: Any) -> None:
        super().__init__(**run)
        self.plan_stats = plan_stats

    def _result(self, finish: FinishReason) -> DecodeResult:
        result = super()._result(finish)
        stats = result.stats
        stats.generated_tokens += self.plan_stats.generated_tokens
        # (its forward passes already count from the start of the answer, the plan's included)
        for name in ("stage_tokens", "stage_seconds"):
            total = getattr(stats, name)
            for stage, value in getattr(self.plan_stats, name).items():
                total[stage] = total.get(stage, 0) + value
        return result


class ToolCallRun(RunState):
    """The run of an answer with `DecodeOptions.tool_calls` (same constructor and events as `DecodeRun`).

    A `RunState` of its own rather than a `DecodeRun`: it has none of the trunk's state (its stop strings
    stay the caller's even with caller-given ``branches``), and the answers it does not plan are decoded by
    a separate `DecodeRun` (`_ordinary`).
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
        **run_options: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            eos_token_ids=eos_token_ids,
            context_window=context_window,
            executor_stats=executor_stats,
            prompt_ids=prompt_ids,
            options=options,
        )
        self.run_options = run_options  # further `DecodeRun` arguments, for the answers decoded without a plan
        self.plan: ToolCallPlan = options.tool_calls
        # Its stage clock starts at the session's passes so far, not at 0 as `RunState`'s: the same for the
        # fresh session of an answer, and kept so that a used session's earlier passes are not charged here.
        self._stage_passes = executor_stats.forward_passes
        if options.branches is not None:
            for title in options.branches:
                self.plan.title_parts(title)  # a title that names no bound tool fails now, before any compute
        self._reserve: int | None = None
        self._decoded: list[_Call] = []

    # ------------------------------------------------------------------ helpers

    def _per_call(self) -> int:
        """Fewest tokens any call's arguments can take (what the plan keeps in reserve for each call)."""
        if self._reserve is None:
            self._reserve = max([min_tokens_to_finish(f()) for f in self.plan.arguments.values()] or [0]) or 1
        return self._reserve

    # ------------------------------------------------------------------ top level

    def events(self) -> Any:
        options = self.options
        if not options.parallel:
            yield from self._ordinary(self.plan.sequential or options.constraint)
            return
        if options.branches is not None:
            titles = list(options.branches)
        else:
            titles = yield from self._plan_calls()
        if len(titles) < 2 and options.branches is None:
            yield from self._ordinary(options.constraint)  # one call: exactly as without a plan
            return
        finish = yield from self._calls(titles)
        self._enter(self._stage)
        yield FinalEvent(self._result(finish))

    def _ordinary(self, constraint: Factory | None) -> Any:
        """Decode the rest of the answer with the ordinary run (no plan), adding this run's plan cost."""
        self._enter(self._stage)
        options = dataclasses.replace(
            self.options,
            tool_calls=None,
            branches=None,
            force_plan=False,
            constraint=constraint,
            max_new_tokens=max(1, self.budget_left),
        )
        inner = _AfterPlan(
            self.stats,
            tokenizer=self.tokenizer,
            eos_token_ids=self.eos_ids,
            context_window=self.context_window,
            executor_stats=self.executor_stats,
            prompt_ids=self.prompt_ids,
            options=options,
            **self.run_options,
        )
        yield from inner.events()  # its commands go to this run's driver, their replies back to it

    # ------------------------------------------------------------------ plan

    def _plan_calls(self) -> Any:
        """Let the model list the calls (one constrained stream); return their titles, duplicates dropped."""
        titles: list[str] = []
        listed = self.prompt_ids + encode(self.tokenizer, self.plan.preamble)
        # Keep enough budget for the arguments of every call the list may hold.
        calls = max(0, min(self.options.max_branches, self.budget_left // (MAX_ENTRY_TOKENS + self._per_call())))
        limit = min(calls * MAX_ENTRY_TOKENS, self.context_window - len(listed) - 1)
        if calls < 2 or limit <= 0:
            return titles  # no room for several calls: one call, decoded as without a plan
        start, listing = "", self.plan.listing
        if self.plan.lead_name is not None and self.plan.listing_after is not None:
            lead = self.prompt_ids + encode(self.tokenizer, self.plan.lead)
            named = yield from self._sample(lead, self.plan.lead_name, MAX_NAME_TOKENS)
            name = named.text.strip().strip('"')
            if name in self.plan.tools:
                start, listing = self.plan.listing_after(name)
                listed += encode(self.tokenizer, start)
            limit = min(limit, self.budget_left - calls * self._per_call())  # the name's tokens are spent
        stream = yield from self._sample(listed, listing, max(1, limit))
        for title in self.plan.read_list(start + stream.text):
            try:
                self.plan.title_parts(title)
            except ValueError:
                continue  # (a list the executor did not hold to the grammar)
            if title not in titles and len(titles) < self.options.max_branches:
                titles.append(title)
        return titles

    def _sample(self, context: list[int], constraint: Factory, limit: int) -> Any:
        """The model's text after ``context`` under ``constraint`` (at most ``limit`` tokens): a `TextStream`."""
        handle = yield Decode(context, max_tokens=limit, constraint=constraint)
        stream = TextStream(self.tokenizer, context[-4:])
        while len(stream.token_ids) < limit:
            token = yield NextToken(handle, self.budget_left)
            if isinstance(token, StreamEnd):
                break
            self._count()
            if token in self.eos_ids:
                break
            stream.push(token)
        yield Close(handle)
        return stream

    # ------------------------------------------------------------------ the calls, as branches

    def _calls(self, titles: list[str]) -> Any:
        prefix = self.prompt_ids
        yield Prefill(prefix)
        self._enter("parallel")
        calls: list[_Call] = []
        factories = []
        for index, title in enumerate(titles):
            tool, _ = self.plan.title_parts(title)
            before, after = self.plan.call_text(tool)
            seed = encode(self.tokenizer, f"{STEP_MARKER}{render_title(title)}:\n{before}")
            calls.append(
                _Call(index, title, tool, seed, prefix + seed, before, after, TextStream(self.tokenizer, seed))
            )
            factories.append(self.plan.arguments[tool])
        handle = yield DecodeBranches(
            prefix,
            [c.seed_ids for c in calls],
            max_tokens=self.options.max_branch_tokens,
            stop=list(self.stops),
            constraints=factories,
        )
        shown = 0  # characters of the answer's text already sent, in reading order
        live = list(calls)
        while live:
            self.stats.max_live_branches = max(self.stats.max_live_branches, len(live))
            if self.budget_left < len(live):
                for c in live:
                    yield from self._end(handle, c, "length", len(c.stream.text))
                break
            replies = yield NextTokens(handle, [c.index for c in live], self.budget_left)
            for c, token in zip(live, replies):
                if isinstance(token, StreamEnd):
                    yield from self._end(handle, c, token.reason, len(c.stream.text))
                    continue
                self._count()
                if token in self.eos_ids:
                    yield from self._end(handle, c, "eos", len(c.stream.text))
                    continue
                before = len(c.stream.text)
                c.stream.push(token)
                hit = find_first(c.stream.text, self.stops, max(0, before - max(map(len, self.stops), default=0)))
                if hit is not None:
                    yield from self._end(handle, c, "stop", hit[0])
                elif len(c.stream.token_ids) >= self.options.max_branch_tokens:
                    yield from self._end(handle, c, "length", len(c.stream.text))
                else:
                    text = c.stream.text
                    c.body = text[: len(text) - held_back(text, self.stops)]  # may still become a stop string
            live = [c for c in live if c.finish is None]
            text = self._reading_order(calls)
            if len(text) > shown:
                yield TokenEvent(text[shown:], None, "parallel", None)
                shown = len(text)
        yield Close(handle)
        self._decoded = calls
        return "length" if any(c.finish == "length" for c in calls) else "stop"

    def _end(self, handle: Any, c: _Call, reason: FinishReason, text_end: int) -> Any:
        c.finish = reason
        c.body = c.stream.text[:text_end]
        yield EndBranch(handle, c.index, c.stream.tokens_before(text_end))

    def _reading_order(self, calls: list[_Call]) -> str:
        """The answer's text so far: every finished call in order, then what the first unfinished one wrote."""
        text = ""
        for c in calls:
            text += c.text(self.plan.separator)
            if c.finish is None:
                break
        return text

    def _result(self, finish: FinishReason) -> DecodeResult:
        calls = self._decoded
        text = "".join(c.text(self.plan.separator) for c in calls)
        ids: list[int] = []
        branches = []
        for c in calls:
            head = (self.plan.separator if c.index else "") + c.prefix
            body_ids = c.stream.token_ids[: c.stream.tokens_before(len(c.body))]
            ids += encode(self.tokenizer, head) + body_ids + encode(self.tokenizer, c.suffix)
            branches.append(
                BranchResult(
                    title=c.title,
                    text=c.body,
                    token_ids=list(c.stream.token_ids),
                    context_ids=c.context_ids,
                    finish_reason=c.finish or "length",
                    block=0,
                )
            )
        return DecodeResult(
            text=text,
            branches=branches,
            stats=self._final_stats(),
            finish_reason=finish,
            token_ids=ids,
            parallel=True,
        )

