"""Decoding options, validated before any compute.

Every check here raises `ValueError` with a message that names the option,
so a bad call fails at once instead of hanging the decoder or leaving a
shared cache half-written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

MergeMode = Literal["reuse", "recompute"]
MERGE_MODES: tuple[str, ...] = ("reuse", "recompute")
OUTPUT_FORMATS: tuple[str, ...] = ("readable", "raw")



@dataclass(frozen=True)
class DecodeOptions:
    """Options of `ParallelBranchDecoder.generate` and `.stream`.

    Budgets are in tokens the model samples: format text the engine writes
    itself (titles it was given, markers) does not count against them.
    """

    branches: list[str] | None = None
    """Caller-given branch titles: skip planning and decode these steps in parallel. Any title with a
    non-space character works; the branch text shows it as `pbd_core.plan_format.render_title` writes it
    (a ``:`` as ``：``, a line break as a space, ...), while `BranchResult.title` and the branch events keep
    the caller's text exactly."""
    max_new_tokens: int = 512
    """Budget for all sampled tokens of the answer (plan, every branch, merge)."""
    max_branch_tokens: int = 256
    """Budget for one branch body."""
    max_branches: int = 16
    """Most branches in one parallel block. More caller-given titles is an error; a longer plan is cut here."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    seed: int | None = None
    stop: list[str] | None = None
    """Stop strings. In a branch they end that branch; elsewhere they end the answer. Never part of the text.
    After caller-given branches, a new ``####`` in the conclusion also ends the answer (the caller chose the
    steps), in both parallel and plain decoding."""
    merge: MergeMode = "recompute"
    """``recompute`` (default): re-encode the branches as one sequential text before the conclusion (the
    paper's merge: one prefill pass). ``reuse``: keep the branch KV and continue after the longest branch
    (no recompute, as Multiverse does); models not trained for it see branches at overlapping positions and
    write worse conclusions (see benchmarks/README.md)."""
    parallel: bool = True
    """False decodes the same prompt plainly, token by token: the baseline."""
    force_plan: bool = False
    """Start the answer with a title list: the engine writes the first ``####`` itself, so a model
    that does not follow the format instruction on its own still lists steps. Ignored with ``branches``.
    With ``parallel=False`` the same ``####`` starts the plain answer, so both modes see the same text."""
    repetition_guard: bool | int = True
    """End a branch that repeats itself (`pbd_core.repetition`): when its newest tokens repeat a whole
    earlier stretch of it (period up to 128 tokens) for ``repetition_guard`` tokens (``True``: 32), or a
    line with at least 10 letters or digits (or a block of lines) comes twice in a row, the branch ends
    with ``finish_reason="repetition"`` and the repeats are cut from its text (one copy stays). Lists of
    similar lines are never cut. ``False`` (or 0) turns it off. Applies to branches, also to the steps
    of ``parallel=False`` with caller-given branches; never under a ``constraint`` (a cut would break
    the grammar's text)."""
    repeated_label_guard: bool = True
    """Part of the branch guard (with ``repetition_guard`` on): a step that begins a line with a label an
    earlier line of it began with (``Answer:`` twice) ends before that line, ``finish_reason="repetition"``
    (`pbd_core.repetition`). A step answers its own question once; small models' branches otherwise go on
    with the answers of the steps after them. Applies where ``repetition_guard`` does (branches, and the
    steps of ``parallel=False`` with caller-given branches), never to the shared text."""
    trunk_repetition_guard: bool | int = False
    """The same guard for the shared text (intro, plan, conclusion, and all of plain decoding): a loop
    there ends the answer with ``finish_reason="repetition"``. Off by default."""
    plan_in_view: bool = False
    """Branches see the whole plan: every branch's shared prefix is the prompt (and text before the
    list) followed by the title list (``####<title>: ...`` per title, `pbd_core.plan_format.planned_entry_text`;
    caller-given titles too), then its own ``####<title>:``. Exactness then reads: each branch equals
    plain decoding of prefix + plan + own title (``BranchResult.context_ids``). The list stays in the
    context after the block (the conclusion sees it) but is not part of the answer's text. With
    ``parallel=False`` and caller-given branches the same list comes before the first step (each step
    sees the plan and the steps before it); plain decoding without given branches plans nothing, so the
    option changes nothing there. Off by default: on the quality suite it made both models worse, as they
    copy the list's elided bodies (`` ...``) into their steps (per-step accuracy in parallel 29% -> 2% on
    SmolLM2-135M, 57% -> 30% on Qwen2.5-Coder-0.5B; `benchmarks/quality/README.md`)."""
    exemplar_step: bool = False
    """Write a block's first step alone, then the others in parallel, each seeing the first as a worked
    example (prefix + first step + own title: what the second step of sequential decoding sees). For a
    block of three or more; ``BranchResult.context_ids`` says what each branch saw, and exactness reads
    "each branch equals plain decoding of that". It costs one step's length of parallelism; see
    `benchmarks/quality/README.md` for what it buys."""
    descriptive_titles: bool = True
    """While the model plans, keep titles from starting with a number (``1``, ``2.``), a generic word
    (the ``Step`` of ``Step 1``, ``Part 2``) or an answer label (``Answer``, ``Yes``), which tell a branch
    nothing about its subject, or with ``#`` (`pbd_core.titles`): a token mask at each title's first
    token only; and a title that is a question ends at its ``?`` (only ``:`` may follow it, so
    ``#### What is 5 times 7?`` and a line break, a heading the plan cannot read, becomes a title).
    Caller-given titles are never touched. In-process models only (a server samples on its own). On
    by default, measured with the adapters' planning instructions
    (`benchmarks/quality/planning_prompts.py`): the numbers and generic words took Qwen2.5-Coder-0.5B from
    33/40 parallelizable and 6/36 other prompts planned to 35/40 and 4/36 (then counted over all blocks;
    ``70 km per hour`` / ``5 hours`` for a word problem are no longer planned); the answer labels and ``#``
    took it from 28/40 to 32/40 blocks of two or more branches, the others unchanged at 4/36 (counted per
    block); the question rule took it to 35/40 and 3/36. On SmolLM2-135M (8 prompts, greedy,
    ``force_plan``) it changed 2 plans, both for the worse (the list ended after one or two titles)."""
    single_title_plans: bool = False
    """Whether a list of one title the model plans by itself is decoded as a block of one branch. ``False``
    (default): the list is dropped once per answer and the model answers directly, its first token may not
    start a list (`pbd_core.plan_gate`); a block of one branch decodes nothing in parallel, it only wraps a
    direct answer in a title and a conclusion. Measured: with the adapters' planning instructions,
    Qwen2.5-Coder-0.5B listed one title for 5 of 6 haikus and 5 of 6 one-sentence rewrites. Forced plans
    and caller-given titles are never touched. In-process models only."""
    nonempty_branches: bool = True
    """A branch may not end, nor write a blank line, before it has written a non-space character
    (`pbd_core.branch_start`): a token mask on a branch's first tokens only. Applies to caller-given and
    planned branches, and to the steps of ``parallel=False`` with caller-given branches, so both modes see
    the same rule (exactness then reads: each branch equals plain decoding of its context under the same
    mask); never under a ``constraint``. In-process models only (a server samples on its own). On by
    default: on the quality suite (40 tasks, SmolLM2-135M) it took per-step accuracy from 19% to 36%
    written one after another and from 15% to 29% in parallel; without it a third of the steps were
    empty (the model answered a lone title by closing it)."""
    output_format: Literal["readable", "raw"] = "readable"
    """What `DecodeResult.text` holds: ``readable`` (default) the answer as a user reads it, each step under
    a ``**<title>**`` line and no format markers (`pbd_core.readable`); ``raw`` the branch-format text
    (``####<title>:...####%%%%...``). `DecodeResult.raw_text` always has the format text, and stream events
    always carry it (`pbd_core.ReadableText` turns them into readable text)."""
    constraint: Callable[[], Any] | None = field(default=None, compare=False)
    """Factory of a `pbd_core.TokenConstraint`; one instance is made per stream (main stream and each branch)."""
    tool_calls: Any = field(default=None, compare=False)
    """A `pbd_core.tool_plan.ToolCallPlan`: the answer is tool calls, several of them planned as titles
    and decoded as parallel branches, one per call, each under its tool's arguments grammar (built by the
    adapters for ``bind_tools``; see `pbd_core.tool_plan`). ``branches`` are then call titles
    (``"<tool>: <hint>"``); one planned call, or ``parallel=False``, decodes as without a plan."""

    def __post_init__(self) -> None:
        _check_positive_int("max_new_tokens", self.max_new_tokens)
        _check_positive_int("max_branch_tokens", self.max_branch_tokens)
        _check_positive_int("max_branches", self.max_branches)
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {self.merge!r}")
        for name in ("repetition_guard", "trunk_repetition_guard"):
            value = getattr(self, name)
            if not isinstance(value, int) or (not isinstance(value, bool) and value < 0):
                raise ValueError(f"{name} must be a bool or an int >= 0 (repeated tokens; 0 = off), got {value!r}")
        for name in ("plan_in_view", "descriptive_titles", "nonempty_branches", "single_title_plans",
                     "repeated_label_guard", "exemplar_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.stop is not None:
            if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
                raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
            if any(s == "" for s in self.stop):
                raise ValueError("stop strings must not be empty")
        if self.branches is not None:
            self._check_branches(self.branches)

    def _check_branches(self, branches: list[str]) -> None:
        if isinstance(branches, str) or not all(isinstance(b, str) for b in branches):
            raise ValueError(f"branches must be a list of strings, got {branches!r}")
        if len(branches) == 0:
            raise ValueError("branches must not be empty (pass None to let the model plan)")
        if len(branches) > self.max_branches:
            raise ValueError(
                f"got {len(branches)} branches but max_branches is {self.max_branches}; "
                "raise max_branches or pass fewer branches"
            )
        for index, title in enumerate(branches):
            # Any other title can be written: `render_title` keeps ':', '####', line breaks... from
            # reading as the format's delimiters, and the caller's text stays the branch's title.
            if not title.strip():
                raise ValueError(
                    f"branch title {index} is {'empty' if not title else 'only whitespace'} ({title!r}): "
                    "every branch needs a title with a non-space character"
                )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "DecodeOptions":
        """Build options from keyword arguments, rejecting unknown names with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown decoding option(s) {unknown}; known options: {sorted(known)}")
        if kwargs.get("branches") is not None and not isinstance(kwargs["branches"], str):
            kwargs["branches"] = list(kwargs["branches"])
        if kwargs.get("stop") is not None and not isinstance(kwargs["stop"], str):
            kwargs["stop"] = list(kwargs["stop"])
        return cls(**kwargs)


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


CALL_OPTION_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(DecodeOptions) if f.name not in ("constraint", "tool_calls")
)
"""The options a caller may pass per call through an adapter (``constraint`` and ``tool_calls`` are built by
the adapters)."""

