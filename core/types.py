"""Public result and event types of the engine.

These are plain dataclasses so that adapters (LangChain, LlamaIndex, the CLI)
can depend on them without importing torch-heavy modules.

Reading order
-------------
`DecodeResult.raw_text` is the answer in the branch format, as if it had been written sequentially::

    <text before the branches> ####<title 1>:<body 1>####<title 2>:<body 2>...####%%%%<conclusion>

where each title is written as `pbd_core.plan_format.render_title` renders it (a caller's
``"Step 1: gather data"`` as ``Step 1： gather data``); `BranchResult.title` and
`BranchStartEvent.title` are the caller's own text.

`DecodeResult.text` is what a user reads (`pbd_core.readable`): the same answer with
each step under its title line (``**<title>**``, the caller's text) and no format markers;
an answer without branches is the same in both. ``output_format="raw"`` makes ``text``
the format text too.

Stream events carry the format text in fragments: every `TokenEvent` with
``branch=None`` is in reading order among themselves, and every fragment of
branch ``i`` belongs between the ``BranchStartEvent`` and ``BranchEndEvent``
of branch ``i``. `pbd_core.ReadingOrder` turns the event stream back into
reading-order text chunks whose concatenation equals `DecodeResult.raw_text`;
`pbd_core.ReadableText` into chunks whose concatenation equals the readable `DecodeResult.text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

FinishReason = Literal["stop", "eos", "length", "end_marker", "repetition", "error"]
"""Why a stream ended.

- ``end_marker``: a branch reached the start of the next step (``####``); the normal end of a branch.
- ``eos``: the model emitted its end-of-sequence token.
- ``stop``: a caller-given stop string was produced (it is not part of the text).
- ``length``: a token budget (``max_branch_tokens`` or ``max_new_tokens``) ran out.
- ``repetition``: the stream started repeating itself (``repetition_guard``, `pbd_core.repetition`); the
  repeats are cut from its text. The adapters and ``pbd serve`` report it as OpenAI's ``stop``.
"""

Stage = Literal["plan", "parallel", "merge"]


@dataclass
class BranchResult:
    """One branch (one independent step) of a parallel block."""

    title: str
    """The title exactly as the caller gave it (or as the model planned it); the branch text and
    ``context_ids`` hold its rendering (`pbd_core.plan_format.seed_text`)."""
    text: str
    """The branch body: what the model wrote after ``####<title>:``, end marker excluded."""
    token_ids: list[int]
    """Tokens the model generated for this branch, including the token that ended it."""
    context_ids: list[int]
    """The exact token ids this branch was conditioned on (shared prefix + its title; with ``plan_in_view``,
    shared prefix + the title list + its title)."""
    finish_reason: FinishReason
    block: int = 0
    """Index of the parallel block this branch belongs to (answers may contain several)."""


@dataclass
class DecodeStats:
    """What the decode cost: the numbers benchmarks and adapters report."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    """Tokens sampled from the model (plan, branches and merge); forced format tokens are not counted."""
    forward_passes: int = 0
    stage_tokens: dict[str, int] = field(default_factory=lambda: {"plan": 0, "parallel": 0, "merge": 0})
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"plan": 0.0, "parallel": 0.0, "merge": 0.0})
    stage_forward_passes: dict[str, int] = field(default_factory=lambda: {"plan": 0, "parallel": 0, "merge": 0})
    max_live_branches: int = 0
    dropped_single_title_plans: int = 0
    """Lists of one title the model wrote and the engine dropped, the model then answering directly
    (`pbd_core.plan_gate`); their tokens count in ``generated_tokens``."""
    kv_tokens: int = 0
    """Length of the KV cache at the end of the decode (one copy of the prefix)."""
    peak_kv_tokens: int = 0
    """Longest the KV cache was during the decode (a recompute merge or a rolled-back plan shrinks it)."""
    server_usage: dict[str, int] | None = None
    """On a server: its own ``usage`` summed over the answer's requests (``requests``, ``prompt_tokens``,
    ``completion_tokens``, ``cached_tokens``): what the server computed, including tokens of requests the
    stages cut short. ``forward_passes`` then counts the decode steps the stages consumed, and the KV fields
    are 0 (the server's cache is its own)."""

    @property
    def tokens_per_forward_pass(self) -> float:
        return self.generated_tokens / self.forward_passes if self.forward_passes else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "forward_passes": self.forward_passes,
            "tokens_per_forward_pass": round(self.tokens_per_forward_pass, 4),
            "stage_tokens": dict(self.stage_tokens),
            "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
            "stage_forward_passes": dict(self.stage_forward_passes),
            "max_live_branches": self.max_live_branches,
            "dropped_single_title_plans": self.dropped_single_title_plans,
            "kv_tokens": self.kv_tokens,
            "peak_kv_tokens": self.peak_kv_tokens,
            **({"server_usage": dict(self.server_usage)} if self.server_usage is not None else {}),
        }


@dataclass
class DecodeResult:
    """The whole answer, its branches and what it cost."""

    text: str
    """The answer as the user reads it: steps under their titles, no format markers (`pbd_core.readable`);
    the same as ``raw_text`` for an answer without branches, or when decoded with ``output_format="raw"``."""
    branches: list[BranchResult]
    stats: DecodeStats
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)
    """Reading-order token ids of the answer, i.e. of ``raw_text`` (for plain decoding: exactly what was sampled)."""
    parallel: bool = True
    """Whether any parallel block was decoded (False for plain decoding or when no plan was found)."""
    raw_text: str | None = None
    """The answer in the branch format (``####<title>:<body>...####%%%%<conclusion>``): what tools that
    parse steps read. Left out, it is ``text``."""

    def __post_init__(self) -> None:
        if self.raw_text is None:
            self.raw_text = self.text


@dataclass
class TokenEvent:
    """New text. ``branch`` is the branch index in this answer, ``None`` outside branches."""

    text: str
    branch: int | None
    stage: Stage
    token_id: int | None = None
    """The sampled token, or ``None`` for text the engine wrote itself (a title, a format marker)."""
    unread_marker: bool = False
    """True for a ``####`` the model wrote that opened no plan (no title could be read after it: a line
    break, 120 characters or the end of the answer came before ``:``; or the answer had planned its last
    block, `pbd_core.stages.MAX_BLOCKS`). A close marker written where no block is open (``####%%%%``,
    ``#### %%%%``) is one such event, whole (`pbd_core.plan_format.unread_marker_span`). It stays in the
    raw text; the readable text leaves it out (`pbd_core.readable`)."""


@dataclass
class BranchStartEvent:
    index: int
    title: str
    """The caller's (or the plan's) own title; the branch's first `TokenEvent` is its rendered header."""
    block: int = 0


@dataclass
class BranchEndEvent:
    index: int
    finish_reason: FinishReason
    text: str


@dataclass
class FinalEvent:
    result: DecodeResult


StreamEvent = Union[TokenEvent, BranchStartEvent, BranchEndEvent, FinalEvent]
