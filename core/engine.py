"""One decode: plan, parallel branches, merge, as a generator of events.

`DecodeRun` owns the state of a single answer: the `TreeCache`, the text
written so far in reading order, the budgets and the statistics. Its phases
are short methods named after the stages of the method:

- `_trunk_run`: sequential decoding of shared text (the intro and plan, or a
  conclusion); watches for ``####`` to start planning;
- `_plan_titles`: lets the model list titles, forcing an elided body after
  each so it writes only the titles;
- `_parallel_block`: prefills every branch title in one pass, then decodes one
  token of every live branch per forward pass; a branch leaves the batch the
  moment it ends;
- `_merge`: makes the branches visible to the conclusion, either by keeping
  their KV (``reuse``) or by re-encoding them as one sequential text
  (``recompute``);
- `_sequential_steps`: the baseline: the same titled steps written one after
  another (``parallel=False`` with caller-given branches).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import TreeCache, trunk
from .detokenize import TextStream, find_first, held_back
from .masks import TRUNK
from .options import DecodeOptions
from .plan_format import (
    CLOSE_TEXT,
    ELISION,
    STEP_MARKER,
    branch_separator,
    planned_entry_text,
    read_title,
    seed_text,
    split_sections,
)
from .prompting import encode
from .sampler import make_sampler
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


@dataclass
class _Branch:
    """A branch being decoded."""

    index: int  # index in the answer (reading order)
    branch_id: int  # id in the cache's slot metadata
    title: str
    seed_ids: list[int]
    context_ids: list[int]
    stream: TextStream
    next_position: int  # position id of the next body token
    constraint: Any = None
    emitted: int = 0
    finish: FinishReason | None = None
    body: str = ""
    pending: int | None = None  # the newest sampled token, not yet written to the cache
    slots: list[int] = field(default_factory=list)  # cache slot of every body token written so far
    owed: list[int] = field(default_factory=list)  # tokens the cache still needs so it matches the body text


@dataclass
class _Segment:
    """A run of trunk tokens sampled by the model."""

    stream: TextStream
    start_slot: int
    emitted: int = 0
    fed: int = 0
    finished_text: str | None = None


@dataclass
class _Outcome:
    finish: FinishReason | None = None
    titles: list[str] = field(default_factory=list)


class DecodeRun:
    """State of one answer. Iterate `events()`; the last event carries the `DecodeResult`."""

    def __init__(self, decoder, prompt_ids: list[int], options: DecodeOptions) -> None:
        self.decoder = decoder
        self.model = decoder.model
        self.tokenizer = decoder.tokenizer
        self.options = options
        self.device = decoder.device
        self.eos_ids = decoder.eos_token_ids
        self.context_window = decoder.context_window
        self.cache = TreeCache(decoder.device, decoder.mask_dtype, decoder.layer_windows)
        generator = None
        if options.seed is not None and options.temperature > 0:
            generator = torch.Generator(device=decoder.device).manual_seed(options.seed)
        self.sample = make_sampler(options.temperature, options.top_p, options.top_k, generator)
        self.prompt_ids = prompt_ids
        self.stats = DecodeStats(prompt_tokens=len(prompt_ids))
        self.slot_ids: list[int] = []  # token id of every cache slot, in slot order
        self.trunk_position = 0  # position id of the next trunk token
        self.parts: list[str] = []  # final text, reading order
        self.answer_ids: list[int] = []
        self.branches: list[BranchResult] = []
        self.next_branch_id = 0
        self.blocks = 0
        self.planning = options.parallel and options.branches is None and options.constraint is None
        self.stops = list(options.stop or [])
        if options.branches is not None:
            # The caller chose the steps: the conclusion ends where the model starts another one.
            self.stops.append(STEP_MARKER)
        self.trunk_constraint = options.constraint() if options.constraint else None
        self._last_logits: torch.Tensor | None = None
        self._stage: Stage = "plan"
        self._stage_started = time.perf_counter()

    # ------------------------------------------------------------------ helpers

    @property
    def budget_left(self) -> int:
        return self.options.max_new_tokens - self.stats.generated_tokens

    def _enter(self, stage: Stage) -> None:
        """Charge the time since the last switch to the current stage, then switch."""
        now = time.perf_counter()
        self.stats.stage_seconds[self._stage] += now - self._stage_started
        self._stage, self._stage_started = stage, now

    def _count(self, n: int = 1) -> None:
        self.stats.generated_tokens += n
        self.stats.stage_tokens[self._stage] += n

    def _forward(
        self,
        ids: list[int],
        branch: list[int],
        position: list[int],
        ctx_end: list[int] | int | None,
        keep: list[int] | None,
    ) -> torch.Tensor:
        """Write ``ids`` into the cache and return float logits of the rows in ``keep`` ([len(keep), vocab])."""
        assert len(ids) == len(branch) == len(position) and ids
        position_ids, mask = self.cache.plan_append(branch, position, ctx_end)
        self.slot_ids.extend(ids)
        if keep is None:
            logits_to_keep: int | torch.Tensor = 1
        elif len(keep) == len(ids):
            logits_to_keep = 0
        else:
            logits_to_keep = torch.tensor(keep, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=position_ids,
                attention_mask=mask,
                past_key_values=self.cache.kv,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        self.stats.forward_passes += 1
        self.stats.stage_forward_passes[self._stage] += 1
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, len(self.cache))
        return out.logits[0].float()

    def _forward_trunk(self, ids: list[int]) -> torch.Tensor:
        """Append trunk tokens at the next positions; logits of the last one ([1, vocab])."""
        positions = list(range(self.trunk_position, self.trunk_position + len(ids)))
        self.trunk_position += len(ids)
        return self._forward(ids, trunk(len(ids)), positions, None, None)

    def _crop(self, length: int) -> None:
        self.cache.crop(length)
        del self.slot_ids[length:]

    def _sample_row(self, logits: torch.Tensor, constraint: Any) -> int:
        if constraint is not None:
            logits = constraint.mask_logits(logits[0].clone())[None]
        token = int(self.sample(logits)[0].item())
        if constraint is not None:
            constraint.advance(token)
        return token

    def _needles(self) -> list[str]:
        return self.stops + ([STEP_MARKER] if self.planning else [])

    def _emit_trunk(self, segment: _Segment, upto: int | None = None, token_id: int | None = None) -> Iterator[StreamEvent]:
        text = segment.stream.text
        end = len(text) - held_back(text, self._needles()) if upto is None else upto
        if end > segment.emitted:
            yield TokenEvent(text[segment.emitted : end], None, self._stage, token_id)
            segment.emitted = end

    def _write_trunk(self, text: str, ids: list[int]) -> Iterator[StreamEvent]:
        """Forced trunk text (a format marker): part of the answer, not sampled."""
        self.parts.append(text)
        self.answer_ids.extend(ids)
        yield TokenEvent(text, None, self._stage, None)

    # ------------------------------------------------------------------ top level

    def events(self) -> Iterator[StreamEvent]:
        forced: list[int] = []
        if self.options.force_plan and self.options.branches is None:
            forced = encode(self.tokenizer, STEP_MARKER)  # the answer starts with a title list
        logits = self._forward_trunk(self.prompt_ids + forced)  # prefill
        finish: FinishReason | None = None
        if self.options.branches is not None:
            if self.options.parallel:
                logits, finish = yield from self._parallel_then_merge(list(self.options.branches))
            else:
                logits, finish = yield from self._sequential_steps(list(self.options.branches))
        while finish is None:
            outcome = yield from self._trunk_run(logits, forced)
            forced = []
            if outcome.finish is not None:
                finish = outcome.finish
                break
            logits, finish = yield from self._parallel_then_merge(outcome.titles)
        self._enter(self._stage)
        result = self._result(finish)
        yield FinalEvent(result)

    def _result(self, finish: FinishReason) -> DecodeResult:
        text = "".join(self.parts)
        branches = self.branches
        if not branches and not self.options.parallel:
            branches = self._sections_of_plain_text(text)
        self.stats.kv_tokens = len(self.cache)
        return DecodeResult(
            text=text,
            branches=branches,
            stats=self.stats,
            finish_reason=finish,
            token_ids=list(self.answer_ids),
            parallel=self.blocks > 0 and self.options.parallel,
        )

    # ------------------------------------------------------------------ trunk

    def _trunk_run(self, logits: torch.Tensor, forced: list[int] = ()) -> Iterator[StreamEvent]:
        """Decode shared text until EOS, a stop string, the budget, or a complete title list.

        ``forced`` are tokens the engine already wrote at the start of this run (a
        ``####`` that opens a plan): they belong to the run's text but were not sampled.
        """
        start_slot = len(self.cache) - len(forced)
        segment = _Segment(TextStream(self.tokenizer, self.slot_ids[max(0, start_slot - 4) : start_slot]), start_slot)
        for token in forced:
            segment.stream.push(token)
        segment.fed = len(forced)
        search_from = 0
        if forced and self.planning:
            outcome = yield from self._plan_titles(segment, 0, logits)
            if outcome is not None:
                return outcome
            search_from, logits = len(STEP_MARKER), self._last_logits
        while True:
            if self.budget_left <= 0 or self.trunk_position >= self.context_window:
                yield from self._close_segment(segment, len(segment.stream.text))
                return _Outcome("length")
            token = self._sample_row(logits, self.trunk_constraint)
            self._count()
            if token in self.eos_ids:
                yield from self._close_segment(segment, len(segment.stream.text))
                return _Outcome("eos")
            before = len(segment.stream.text)
            segment.stream.push(token)
            text = segment.stream.text
            hit = find_first(text, self.stops, max(0, before - max(map(len, self.stops), default=0)))
            if hit is not None:
                yield from self._close_segment(segment, hit[0])
                return _Outcome("stop")
            if self.planning and self.blocks < MAX_BLOCKS:
                marker = text.find(STEP_MARKER, max(search_from, before - len(STEP_MARKER)))
                if marker != -1:
                    logits = self._feed_trunk_token(segment, token)
                    outcome = yield from self._plan_titles(segment, marker, logits)
                    if outcome is not None:
                        return outcome
                    search_from = marker + len(STEP_MARKER)  # malformed: the text stays, keep decoding
                    logits = self._last_logits
                    continue
            yield from self._emit_trunk(segment, token_id=token)
            if self.trunk_constraint is not None and self.trunk_constraint.is_finished():
                yield from self._close_segment(segment, len(segment.stream.text))
                return _Outcome("stop")
            logits = self._feed_trunk_token(segment, token)

    def _feed_trunk_token(self, segment: _Segment, token: int) -> torch.Tensor:
        logits = self._forward_trunk([token])
        segment.fed += 1
        return logits

    def _close_segment(self, segment: _Segment, text_end: int) -> Iterator[StreamEvent]:
        """Make the segment's text (up to ``text_end``) final and emit what was held back."""
        stream = segment.stream
        yield from self._emit_trunk(segment, upto=text_end)
        self.parts.append(stream.text[:text_end])
        self.answer_ids.extend(stream.token_ids[: stream.tokens_before(text_end)])

    def _plan_titles(self, segment: _Segment, marker: int, logits: torch.Tensor) -> Iterator[StreamEvent]:
        """The model wrote ``####``: read its title list, or give up and leave the text alone.

        Returns an `_Outcome` with the titles when a list was read (or with a finish
        reason if the answer ended while reading), and ``None`` when the first entry
        is malformed: decoding then simply continues sequentially with the model's
        own tokens, so nothing is lost. Sets ``self._last_logits``.
        """
        stream = segment.stream
        after_marker = marker + len(STEP_MARKER)
        # Read the first title with the model's own tokens (nothing is rolled back yet).
        read = read_title(stream.text[after_marker:])
        for _ in range(MAX_TITLE_TOKENS):
            if read.status != "pending":
                break
            if self.budget_left <= 0:
                yield from self._close_segment(segment, len(stream.text))
                return _Outcome("length")
            token = self._sample_row(logits, None)
            self._count()
            if token in self.eos_ids:
                yield from self._close_segment(segment, len(stream.text))
                return _Outcome("eos")
            stream.push(token)
            logits = self._feed_trunk_token(segment, token)
            read = read_title(stream.text[after_marker:])
        self._last_logits = logits
        if read.status != "title":
            return None

        # Commit: the text before the marker is final; the list itself is rolled back below.
        yield from self._emit_trunk(segment, upto=marker)
        keep = stream.tokens_before(marker)
        leftover = stream.text[stream.ends[keep - 1] if keep else 0 : marker]
        self.parts.append(stream.text[:marker])
        leftover_ids = encode(self.tokenizer, leftover) if leftover else []
        self.answer_ids.extend(stream.token_ids[:keep] + leftover_ids)
        list_slot = segment.start_slot + keep
        list_position = self.trunk_position - (segment.fed - keep)
        self._crop(list_slot)
        self.trunk_position = list_position

        titles = [read.title]
        forced = leftover_ids + encode(self.tokenizer, planned_entry_text(read.title))
        forced += encode(self.tokenizer, STEP_MARKER)
        while len(titles) < self.options.max_branches and self.budget_left > 0:
            title_slot = len(self.cache)
            logits = self._forward_trunk(forced)
            entry = TextStream(self.tokenizer, forced)
            read = read_title("")
            for _ in range(MAX_TITLE_TOKENS):
                if self.budget_left <= 0:
                    break
                token = self._sample_row(logits, None)
                self._count()
                if token in self.eos_ids:
                    break
                entry.push(token)
                read = read_title(entry.text)
                if read.status != "pending":
                    break
                logits = self._forward_trunk([token])
            if read.status != "title" or read.title in titles:
                break  # "%%%%" closed the list, the entry is malformed, or the model repeats itself
            titles.append(read.title)
            self._crop(title_slot + len(forced))  # drop the model's own title tokens ...
            self.trunk_position = list_position + (len(self.cache) - list_slot)
            forced = encode(self.tokenizer, f"{read.title}:{ELISION}")  # ... and write the canonical entry
            forced += encode(self.tokenizer, STEP_MARKER)
        # Roll the list back: the branches replace it.
        self._crop(list_slot)
        self.trunk_position = list_position
        if leftover_ids:
            self._forward_trunk(leftover_ids)
        return _Outcome(None, titles)

    # ------------------------------------------------------------------ parallel block

    def _start_branches(self, titles: list[str], block_slot: int, block_position: int) -> Iterator[StreamEvent]:
        branches = []
        prefix = list(self.slot_ids[:block_slot])
        for title in titles:
            seed = encode(self.tokenizer, seed_text(title))
            branch = _Branch(
                index=len(self.branches) + len(branches),
                branch_id=self.next_branch_id,
                title=title,
                seed_ids=seed,
                context_ids=prefix + seed,
                stream=TextStream(self.tokenizer, seed),
                next_position=block_position + len(seed),
                constraint=self.options.constraint() if self.options.constraint else None,
            )
            self.next_branch_id += 1
            branches.append(branch)
            yield BranchStartEvent(branch.index, title, self.blocks)
            yield TokenEvent(seed_text(title), branch.index, "parallel", None)
        return branches

    def _parallel_then_merge(self, titles: list[str]) -> Iterator[StreamEvent]:
        self._enter("parallel")
        block_slot, block_position = len(self.cache), self.trunk_position
        branches = yield from self._start_branches(titles, block_slot, block_position)
        # Prefill every title in one pass: each sees the prefix and its own title only.
        ids, branch_ids, positions, keep = [], [], [], []
        for b in branches:
            ids += b.seed_ids
            branch_ids += [b.branch_id] * len(b.seed_ids)
            positions += list(range(block_position, block_position + len(b.seed_ids)))
            keep.append(len(ids) - 1)
        logits = self._forward(ids, branch_ids, positions, block_slot, keep)
        live = list(branches)
        while live:
            self.stats.max_live_branches = max(self.stats.max_live_branches, len(live))
            if self.budget_left < len(live):  # not enough budget for one more token of every branch
                for b in live:
                    yield from self._end_branch(b, "length", len(b.stream.text))
                break
            tokens = self._sample_rows(logits, live)
            for b, token in zip(live, tokens):
                self._count()
                yield from self._advance_branch(b, token)
            live = [b for b in live if b.finish is None]
            if not live:
                break
            # One forward pass: the newest token of every live branch.
            ids = [b.pending for b in live]
            positions = [b.next_position for b in live]
            first_slot = len(self.cache)
            for row, b in enumerate(live):
                b.slots.append(first_slot + row)
                b.pending, b.next_position = None, b.next_position + 1
            logits = self._forward(ids, [b.branch_id for b in live], positions, block_slot, list(range(len(live))))
        for b in branches:
            self._record_branch(b, block=self.blocks)
        self.blocks += 1
        return (yield from self._merge(branches, block_slot, block_position))

    def _sample_rows(self, logits: torch.Tensor, live: list[_Branch]) -> list[int]:
        if any(b.constraint is not None for b in live):
            logits = logits.clone()
            for row, b in enumerate(live):
                if b.constraint is not None:
                    logits[row] = b.constraint.mask_logits(logits[row])
        tokens = self.sample(logits).tolist()
        for b, token in zip(live, tokens):
            if b.constraint is not None:
                b.constraint.advance(token)
        return tokens

    def _advance_branch(self, b: _Branch, token: int) -> Iterator[StreamEvent]:
        """Take one sampled token into branch ``b``; end the branch when its text says so."""
        if token in self.eos_ids:
            b.stream.token_ids.append(token)
            yield from self._end_branch(b, "eos", len(b.stream.text))
            return
        before = len(b.stream.text)
        b.stream.push(token)
        text = b.stream.text
        needles = [STEP_MARKER] + self.stops
        hit = find_first(text, needles, max(0, before - max(map(len, needles))))
        if hit is not None:
            yield from self._end_branch(b, "end_marker" if hit[1] == STEP_MARKER else "stop", hit[0])
            return
        b.pending = token
        if b.constraint is not None and b.constraint.is_finished():
            yield from self._end_branch(b, "stop", len(text))
            return
        if len(b.stream.token_ids) >= self.options.max_branch_tokens or b.next_position >= self.context_window:
            yield from self._end_branch(b, "length", len(text))
            return
        end = len(text) - held_back(text, needles)
        if end > b.emitted:
            yield TokenEvent(text[b.emitted : end], b.index, "parallel", token)
            b.emitted = end

    def _end_branch(self, b: _Branch, reason: FinishReason, text_end: int) -> Iterator[StreamEvent]:
        """End ``b``; work out what its cache entries must become so they say exactly ``b.body``.

        A marker or stop string can span tokens: tokens after the body end that were
        already written are hidden from everything that follows, and any text of
        the body inside the ending token is owed as freshly encoded tokens.
        """
        b.finish = reason
        b.body = b.stream.text[:text_end]
        if reason == "length":
            b.owed = [b.pending] if b.pending is not None else []
        elif reason == "eos":
            b.owed = []
        else:
            keep = b.stream.tokens_before(text_end)
            leftover = b.stream.text[b.stream.ends[keep - 1] if keep else 0 : text_end]
            self.cache.hide(b.slots[keep:])
            b.next_position -= len(b.slots) - min(keep, len(b.slots))
            b.slots = b.slots[:keep]
            # (positions stay contiguous: the owed tokens take the places of the hidden ones)
            b.owed = encode(self.tokenizer, leftover) if leftover else []
        b.pending = None
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

    def _merge(self, branches: list[_Branch], block_slot: int, block_position: int) -> Iterator[StreamEvent]:
        self._enter("merge")
        if self.budget_left <= 0:
            return None, "length"
        close_ids = encode(self.tokenizer, CLOSE_TEXT)
        if self.options.merge == "recompute":
            self._crop(block_slot)
            self.trunk_position = block_position
            text = "".join(seed_text(b.title) + b.body + branch_separator(b.body) for b in branches) + CLOSE_TEXT
            logits = self._forward_trunk(encode(self.tokenizer, text))
        else:
            # Keep every branch's KV; write what branches still owe together with the close marker.
            ids, branch_ids, positions = [], [], []
            for b in branches:
                ids += b.owed
                branch_ids += [b.branch_id] * len(b.owed)
                positions += list(range(b.next_position, b.next_position + len(b.owed)))
                b.next_position += len(b.owed)
            ctx_end = [block_slot] * len(ids) + [TRUNK] * len(close_ids)
            self.trunk_position = max(b.next_position for b in branches)
            ids += close_ids
            branch_ids += trunk(len(close_ids))
            positions += list(range(self.trunk_position, self.trunk_position + len(close_ids)))
            self.trunk_position += len(close_ids)
            logits = self._forward(ids, branch_ids, positions, ctx_end, None)
        yield from self._write_trunk(CLOSE_TEXT, close_ids)
        return logits, None

    # ------------------------------------------------------------------ sequential baseline

    def _sequential_steps(self, titles: list[str]) -> Iterator[StreamEvent]:
        """The paper's baseline: the same titled steps, one after another, each seeing the ones before."""
        self._enter("parallel")
        for title in titles:
            seed = encode(self.tokenizer, seed_text(title))
            b = _Branch(
                index=len(self.branches),
                branch_id=TRUNK,
                title=title,
                seed_ids=seed,
                context_ids=list(self.slot_ids) + seed,
                stream=TextStream(self.tokenizer, seed),
                next_position=self.trunk_position + len(seed),
                constraint=self.options.constraint() if self.options.constraint else None,
            )
            yield BranchStartEvent(b.index, title, self.blocks)
            yield TokenEvent(seed_text(title), b.index, "parallel", None)
            logits = self._forward_trunk(seed)
            body_slot = len(self.cache)
            while b.finish is None:
                if self.budget_left <= 0:
                    yield from self._end_branch(b, "length", len(b.stream.text))
                    break
                [token] = self._sample_rows(logits, [b])
                self._count()
                yield from self._advance_branch(b, token)
                if b.finish is None:
                    b.slots.append(len(self.cache))
                    b.pending, b.next_position = None, b.next_position + 1
                    logits = self._forward_trunk([token])
            # Slots are contiguous here: roll back what follows the body, then write what it owes.
            hidden = len(self.cache) - (body_slot + len(b.slots))
            if hidden:
                self._crop(body_slot + len(b.slots))
                self.trunk_position -= hidden
            if b.owed:
                self._forward_trunk(b.owed)
            self._record_branch(b, block=self.blocks)
        self._enter("merge")
        if self.budget_left <= 0:
            return None, "length"
        close_ids = encode(self.tokenizer, CLOSE_TEXT)
        logits = self._forward_trunk(close_ids)
        yield from self._write_trunk(CLOSE_TEXT, close_ids)
        return logits, None

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
