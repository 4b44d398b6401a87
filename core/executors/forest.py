"""Continuous batching across answers: one forward pass carries every live stream of every answer.

`TorchTree` gives one answer its own KV cache. Concurrent answers on one
decoder would then take turns, although a forward pass with many new tokens
costs about what one with a single token costs (the step-cost ceiling). Here
every answer gets a `ForestTree` instead: a *view* onto one shared cache.

**One cache, a forest mask.** The `ForestScheduler` owns one `DynamicCache`
(batch 1) whose slots belong to different answers. A view keeps its answer's
slot metadata in its own coordinates (branch, position, context end,
visibility: exactly `TreeCache`'s) plus the global slot of each of its slots.
The mask rows of its new tokens are computed in its own coordinates by the
tree rule (`pbd_core.masks`) and scattered into the columns of its own global
slots; every other column stays blocked. So a token sees its own answer's
prefix and its own branch only, with its own position ids: the forest is a
set of trees that never see each other.

**One step.** `ForestTree.append` (called by `LocalExecutor` in the answer's
own thread) hands its tokens to the scheduler and waits. One of the waiting
threads leads: it collects what every admitted answer has handed in (it waits
until all of them have, or until no new work came for ``gather_wait``
seconds), runs one forward pass with all of it (trunk tokens of answers in their plan or
conclusion, the branch tokens of answers in a parallel block, and one chunk of
at most ``prefill_chunk`` prompt tokens), and hands each answer its logits
rows; when its own work is done another waiting thread leads. Answers join
and leave between any two steps. A long prompt is fed one
chunk per step, so it never stalls running streams for more than one chunk.

**Rollbacks never disturb another answer.** Cropping a view (a plan list
replaced by branches, a recompute merge, a stop string) marks its cut slots
dead; dead slots are blocked for every token, and the scheduler removes them
between steps: trailing dead slots are cut off the cache at once, dead slots in
the middle are compacted away (one gather of the cache along the slot axis)
once they make up a quarter of it. Compaction renumbers global slots only; a
view's own coordinates, and therefore its masks, positions and results, do not
change. Hidden slots (text cut from a branch) stay in the view and blocked, as
in `TreeCache`.

**Admission.** An answer is admitted at its first forward pass when the live
streams (one per answer, one per branch in a parallel block) stay under
``max_streams`` and the KV tokens reserved stay under ``max_kv_tokens``. Its
reservation is its prompt plus twice its token budget (a recompute merge
re-encodes the branches), within the context window. Answers that do not fit
wait in FIFO order; one that waits longer than ``admission_timeout`` raises
`AdmissionTimeout`. An answer that could never fit raises at once.

**Cancellation.** `ForestTree.release` (the session's ``close``: the caller
stopped iterating, a client disconnected) marks the answer's slots dead and
frees its reservation before the next step.

**One answer alone** takes exactly `TorchTree`'s path: while the cache holds
one answer's slots only and that answer is a plain causal sequence, no mask is
built and the model's own causal attention runs.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from ..cache import SlotTable
from ..masks import TRUNK, to_additive, window_predicate

DEAD = -1
"""Owner of a slot nobody attends to any more (waiting to be removed)."""


class AdmissionTimeout(RuntimeError):
    """An answer waited longer than ``admission_timeout`` for room in the batch."""


@dataclass
class _Work:
    """One `ForestTree.append`: its tokens, its mask rows, and where its logits go."""

    tree: "ForestTree"
    ids: list[int]
    position: list[int]
    allowed: dict[str | None, torch.Tensor]  # layer type (None: the one mask) -> bool [n, local slots after]
    keep: list[int]
    trunk_only: bool
    local_start: int  # the view's slot count before this append
    done_rows: int = 0
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # token index -> logits
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class ForestScheduler:
    """Runs the forward passes of every answer on one model (see the module docstring).

    Args:
        model, device, mask_dtype, layer_windows: as for `TorchTree`.
        context_window: the model's; caps a reservation.
        max_streams: most live streams (trunks and branches) of admitted answers; default 64.
        max_kv_tokens: most KV tokens reserved by admitted answers; default: what a quarter of the
            machine's available memory holds, at least 32768.
        admission_timeout: seconds an answer may wait for admission before `AdmissionTimeout`.
        prefill_chunk: most prompt tokens fed in one step while other answers decode.
        gather_wait: seconds the scheduler waits for stragglers once some answer has handed in work.
    """

    def __init__(
        self,
        model,
        device: torch.device,
        mask_dtype: torch.dtype,
        layer_windows: dict[str, int | None] | None = None,
        *,
        context_window: int = 2048,
        max_streams: int | None = None,
        max_kv_tokens: int | None = None,
        admission_timeout: float = 600.0,
        prefill_chunk: int = 256,
        gather_wait: float = 0.002,
    ) -> None:
        self.model = model
        self.device = device
        self.mask_dtype = mask_dtype
        self.layer_windows = layer_windows
        self.context_window = context_window
        self.max_streams = int(max_streams or 64)
        self.max_kv_tokens = int(max_kv_tokens or default_max_kv_tokens(model))
        if self.max_streams < 1 or self.max_kv_tokens < 1:
            raise ValueError("max_streams and max_kv_tokens must be positive")
        self.admission_timeout = float(admission_timeout)
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.gather_wait = float(gather_wait)

        self.kv = DynamicCache()
        self.owner: list[int] = []  # per global slot: the answer's id, or DEAD
        self.dead = 0
        self._cond = threading.Condition()
        self._pending: list[_Work] = []
        self._last_submit = 0.0
        self._last_step_end = 0.0
        self._active: dict[int, ForestTree] = {}
        self._queue: deque[ForestTree] = deque()  # waiting for admission, FIFO
        self._ids = itertools.count()
        self._leading = False  # an answer's thread is running steps for everyone
        self.steps = 0
        self.compactions = 0
        self.forward_seconds = 0.0  # inside the model's forward passes
        self.gather_seconds = 0.0  # waiting for answers to hand in their next tokens

    # ------------------------------------------------------------------ views

    def new_tree(self) -> "ForestTree":
        return ForestTree(self, next(self._ids))

    @property
    def reserved_tokens(self) -> int:
        return sum(t.reservation for t in self._active.values())

    @property
    def live_streams(self) -> int:
        return sum(t.streams for t in self._active.values())

    def stats(self) -> dict[str, int]:
        """What the batch holds now (for monitoring and tests)."""
        with self._cond:
            return {
                "active": len(self._active),
                "waiting": len(self._queue),
                "live_streams": self.live_streams,
                "reserved_tokens": self.reserved_tokens,
                "cache_slots": len(self.owner),
                "dead_slots": self.dead,
                "steps": self.steps,
                "compactions": self.compactions,
                "forward_seconds": round(self.forward_seconds, 3),
                "gather_seconds": round(self.gather_seconds, 3),
            }

    def _admit(self, tree: "ForestTree", reservation: int) -> None:
        """Block until ``tree`` fits (FIFO), then count it in."""
        if reservation > self.max_kv_tokens:
            raise ValueError(
                f"this answer may need {reservation} KV tokens (prompt plus twice max_new_tokens) but the "
                f"decoder's max_kv_tokens is {self.max_kv_tokens}: lower max_new_tokens or raise max_kv_tokens"
            )
        deadline = time.monotonic() + self.admission_timeout
        with self._cond:
            self._queue.append(tree)
            try:
                while not (
                    self._queue[0] is tree
                    and (not self._active or (
                        self.live_streams + 1 <= self.max_streams
                        and self.reserved_tokens + reservation <= self.max_kv_tokens
                    ))
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise AdmissionTimeout(
                            f"waited {self.admission_timeout:.0f} s for room in the batch ({len(self._active)} "
                            f"answers decoding, {self.live_streams}/{self.max_streams} streams, "
                            f"{self.reserved_tokens}/{self.max_kv_tokens} KV tokens reserved); raise "
                            "admission_timeout, max_streams or max_kv_tokens, or send fewer requests at once"
                        )
                    self._cond.wait(remaining)
            finally:
                self._queue.remove(tree)
                self._cond.notify_all()
            tree.reservation = reservation
            self._active[tree.answer] = tree

    def _release(self, tree: "ForestTree") -> None:
        with self._cond:
            for slot in tree.global_slots:
                if self.owner[slot] != DEAD:
                    self.owner[slot] = DEAD
                    self.dead += 1
            tree.global_slots = []
            self._active.pop(tree.answer, None)
            if not self._active and not self._pending:
                self._maintain()  # the last answer left: no forward pass can be running; free everything now
            self._cond.notify_all()

    def _crop(self, tree: "ForestTree", length: int) -> None:
        """Kill ``tree``'s slots from its ``length``-th on (under the lock: compaction renumbers slots)."""
        with self._cond:
            for slot in tree.global_slots[length:]:
                if self.owner[slot] != DEAD:
                    self.owner[slot] = DEAD
                    self.dead += 1
            del tree.global_slots[length:]

    # ------------------------------------------------------------------ the loop

    def _submit(self, work: _Work) -> None:
        """Hand in ``work`` and return when its logits are there.

        There is no scheduler thread: the answers' own threads take turns as the *leader*, which
        gathers everyone's work, runs the step and hands the logits out, until its own work is done;
        then another waiting answer takes over. One answer alone thus runs its forward passes in its
        caller's thread, as without batching. (This matters on the CPU: with GNU OpenMP, once two
        threads have each run parallel regions, every region pays a futex wake-up, about 10 ms a
        forward pass of the default model on two cores; a dedicated thread made every single-answer
        decode pay that.)
        """
        with self._cond:
            self._pending.append(work)
            self._last_submit = time.monotonic()
            self._cond.notify_all()
            while not work.finished.is_set() and self._leading:
                self._cond.wait()
            if work.finished.is_set():
                return self._raise_if_failed(work)
            self._leading = True
        try:
            while not work.finished.is_set():
                self._step()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()  # a waiting answer with work left takes over
        self._raise_if_failed(work)

    @staticmethod
    def _raise_if_failed(work: _Work) -> None:
        if work.error is not None:
            raise RuntimeError(f"the batched forward pass failed: {work.error}") from work.error

    def _step(self) -> None:
        """One forward pass with what the admitted answers have handed in (the leader calls it)."""
        with self._cond:
            gather_start = time.perf_counter()
            while True:  # gather: every admitted answer, or a pause in arrivals
                waiting_for = {t.answer for t in self._active.values()} - {w.tree.answer for w in self._pending}
                # The pause counts from the later of the last hand-in and the last step's end: answers of
                # that step need a moment to sample before they hand in again, or the batch splits in two.
                since = max(self._last_submit, self._last_step_end)
                remaining = since + self.gather_wait - time.monotonic()
                if not waiting_for or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._maintain()
            step, parts = self._select()
            self.gather_seconds += time.perf_counter() - gather_start
        forward_start = time.perf_counter()
        try:
            self._forward(step, parts)
        except BaseException as error:  # every answer of the step fails; the batch goes on
            self._rollback(parts)
            for work in step:
                work.error = error
        with self._cond:
            self.forward_seconds += time.perf_counter() - forward_start
            self._last_step_end = time.monotonic()
            self.steps += 1
            for work in step:
                if work.error is not None or work.done_rows == len(work.ids):
                    self._pending.remove(work)
                    work.finished.set()
            self._cond.notify_all()

    def _select(self) -> tuple[list[_Work], list[tuple[_Work, int, int]]]:
        """This step's work: every decode and branch step in full, prompt chunks FIFO up to ``prefill_chunk``.

        A trunk run of more than one token (a prompt, a re-encoded merge) is a prefill: it is always cut
        into chunks of ``prefill_chunk`` tokens, whoever else decodes, so an answer computes the same
        chunks alone and in company; a chunk that does not fit this step waits for the next one.
        """
        parts, step, prefill_rows = [], [], 0
        for work in self._pending:
            left = len(work.ids) - work.done_rows
            if left <= 0:
                continue
            take = left
            if work.trunk_only and left > 1:
                take = min(left, self.prefill_chunk)
                if prefill_rows and prefill_rows + take > self.prefill_chunk:
                    continue
                prefill_rows += take
            parts.append((work, work.done_rows, work.done_rows + take))
            step.append(work)
        return step, parts

    def _forward(self, step: list[_Work], parts: list[tuple[_Work, int, int]]) -> None:
        start = len(self.owner)
        ids, positions, keep_rows = [], [], []
        for work, a, b in parts:
            tree = work.tree
            first = len(self.owner)
            new_slots = list(range(first, first + b - a))
            self.owner.extend([tree.answer] * (b - a))
            tree.global_slots.extend(new_slots)
            ids += work.ids[a:b]
            positions += work.position[a:b]
            for i in work.keep:
                if a <= i < b:
                    keep_rows.append((work, i, first - start + i - a))
        n = len(ids)
        solo = len(parts) == 1 and parts[0][0].tree.linear and parts[0][0].trunk_only and self.dead == 0 and (
            len(parts[0][0].tree.global_slots) == len(self.owner))
        mask = None if solo else self._mask(parts, start, n)
        rows = [r for _, _, r in keep_rows]
        logits_to_keep: int | torch.Tensor = 0 if rows == list(range(n)) else torch.tensor(rows, device=self.device)
        if not rows:
            logits_to_keep = 1
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=torch.tensor([positions], device=self.device),
                attention_mask=mask,
                past_key_values=self.kv,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        logits = out.logits[0].float()
        for row, (work, i, _) in enumerate(keep_rows):
            work.rows[i] = logits[row]
        for work, a, b in parts:
            work.done_rows = b

    def _mask(self, parts, start: int, n: int):
        total = start + n
        kinds = [None] if self.layer_windows is None else list(self.layer_windows)
        allowed = {k: torch.zeros((n, total), dtype=torch.bool, device=self.device) for k in kinds}
        row = 0
        for work, a, b in parts:
            local_end = work.local_start + b
            cols = torch.tensor(work.tree.global_slots[:local_end], device=self.device)
            for k in kinds:
                allowed[k][row : row + b - a].index_copy_(1, cols, work.allowed[k][a:b, :local_end])
            row += b - a
        if self.layer_windows is None:
            return to_additive(allowed[None], self.mask_dtype)
        return {k: to_additive(v, self.mask_dtype) for k, v in allowed.items()}

    def _rollback(self, parts) -> None:
        """A failed pass: forget the slots it was writing (some layers may hold them already)."""
        keep = len(self.owner) - sum(b - a for _, a, b in parts)
        for work, a, b in parts:
            del work.tree.global_slots[len(work.tree.global_slots) - (b - a) :]
        del self.owner[keep:]
        for layer in self.kv.layers:
            if getattr(layer, "is_initialized", False) and layer.keys.shape[-2] > keep:
                layer.keys = layer.keys[..., :keep, :]
                layer.values = layer.values[..., :keep, :]

    def _maintain(self) -> None:
        """Between steps: cut trailing dead slots; compact when a quarter of the cache is dead."""
        trailing = 0
        while trailing < len(self.owner) and self.owner[len(self.owner) - 1 - trailing] == DEAD:
            trailing += 1
        if trailing:
            if trailing == len(self.owner):
                self.kv = DynamicCache()
            else:
                self.kv.crop(-trailing)
            del self.owner[len(self.owner) - trailing :]
            self.dead -= trailing
        if self.dead and (self.dead * 4 >= len(self.owner) or not self._active):
            self._compact()

    def _compact(self) -> None:
        keep = [slot for slot, owner in enumerate(self.owner) if owner != DEAD]
        new_index = {old: new for new, old in enumerate(keep)}
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in self.kv.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys = layer.keys.index_select(-2, index)
                layer.values = layer.values.index_select(-2, index)
        for tree in self._active.values():
            tree.global_slots = [new_index[s] for s in tree.global_slots]
        self.owner = [self.owner[s] for s in keep]
        self.dead = 0
        self.compactions += 1


class ForestTree:
    """One answer's `pbd_core.executors.tree.TokenTree` on a `ForestScheduler` (see the module docstring)."""

    def __init__(self, scheduler: ForestScheduler, answer: int) -> None:
        self.scheduler = scheduler
        self.answer = answer
        self.slots = SlotTable(scheduler.device, scheduler.layer_windows)  # in this answer's own coordinates
        self.global_slots: list[int] = []  # the shared cache's slot of each of its slots
        self.slot_ids: list[int] = []
        self.admitted = False
        self.reservation = 0
        self.budget_tokens: int | None = None  # the answer's max_new_tokens, for its reservation
        self.streams = 1

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def linear(self) -> bool:
        return self.slots.linear

    def expect(self, *, max_new_tokens: int) -> None:
        """The answer's token budget (sizes its KV reservation at admission)."""
        self.budget_tokens = int(max_new_tokens)

    def append(
        self,
        ids: Sequence[int],
        branch: Sequence[int],
        position: Sequence[int],
        ctx_end: Sequence[int] | int | None,
        keep: Sequence[int] | None,
    ) -> torch.Tensor:
        n = len(ids)
        assert n > 0 and len(branch) == n and len(position) == n
        if not self.admitted:
            budget = self.budget_tokens if self.budget_tokens is not None else self.scheduler.context_window
            reservation = min(n + 2 * budget, self.scheduler.context_window + budget)
            self.scheduler._admit(self, reservation)
            self.admitted = True
        start = len(self)
        allowed = self.slots.add(branch, position, ctx_end)
        self.streams = max(1, len({int(b) for b in branch if int(b) != TRUNK}))
        keep_rows = [n - 1] if keep is None else [int(k) for k in keep]
        trunk_only = ctx_end is None and all(int(b) == TRUNK for b in branch)
        work = _Work(self, [int(t) for t in ids], [int(p) for p in position], allowed, keep_rows, trunk_only, start)
        self.slot_ids.extend(work.ids)
        try:
            self.scheduler._submit(work)
        except BaseException:
            self.slots.crop(start)
            del self.slot_ids[start:]
            raise
        return torch.stack([work.rows[i] for i in keep_rows])

    def crop(self, length: int) -> None:
        assert 0 <= length <= len(self), (length, len(self))
        self.scheduler._crop(self, length)
        self.slots.crop(length)
        del self.slot_ids[length:]
        self.streams = 1

    def hide(self, slots: Sequence[int]) -> None:
        self.slots.hide(slots)

    def release(self) -> None:
        """The answer is over (or abandoned): free its slots and its place in the batch."""
        if self.admitted:
            self.scheduler._release(self)
            self.admitted = False

    def dense_mask(self) -> torch.Tensor:
        """``[L, L]`` boolean over this answer's own slots (full-attention layers)."""
        return self.slots.dense_mask()


def default_max_kv_tokens(model) -> int:
    """KV tokens a quarter of the machine's available memory holds (at least 32768)."""
    try:
        config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = next(model.parameters()).element_size()
        per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * element
    except (AttributeError, StopIteration, TypeError):  # not a standard transformers config: be modest
        return 32768
    available = _available_memory_bytes()
    if available is None:
        return 32768
    return max(32768, int(available // 4 // max(1, per_token)))


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
