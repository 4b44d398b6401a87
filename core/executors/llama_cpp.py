"""`LlamaCppTree`: the token tree on a llama.cpp context, each branch a sequence.

llama.cpp already has the mechanism the tree mask expresses. Its *unified* KV
cache (``kv_unified=True``) is one pool of cells; a cell belongs to one or
more sequence ids and has a position; a token of a batch carries its own
sequence id and position and attends to the cells of its sequence whose
position is not after its own. So:

- the trunk (prompt, plan, conclusion) is sequence 0;
- branch ``b`` gets its own sequence the first time one of its tokens is
  written: the trunk's cells before the branch's ``ctx_end`` are *added* to
  that sequence (`llama_memory_seq_cp` on a unified cache shares the cells,
  nothing is copied), so the prefix is stored once and every branch sees it;
  the branch's own cells belong to its sequence only, so siblings never see
  each other, and each branch carries the positions it would have alone;
- a trunk token written after branch cells (the ``reuse`` merge) must see
  every branch: before it is decoded, each branch's own cells are added to
  sequence 0 too. llama.cpp's causal rule is by position, and the merge goes
  on at positions after the longest branch, so the trunk sees all of them;
- ``crop`` and ``hide`` become `llama_memory_seq_rm` calls by position range,
  translated from slots through the per-slot (sequence, position) record.
  Hidden cells are handed to a sequence nobody attends to rather than freed,
  so no hole opens in the middle of the cache (see "Exactness" below).

Exactness. A branch computes bit-identical logits to plain decoding of
``prefix + branch`` in a fresh single-sequence context fed in the same calls
(the prefix in one, the title in the next, then one token per call), as long as
llama.cpp's CPU backend computes each row as it would alone. Measured on 0.3.36:

- attention visits cells in cell order, and with 4-bit weights a change of
  summation order moves logits by tenths (permuting the cells of a plain
  sequence moves SmolLM2's by up to 0.65): cells must lie in position order.
  New cells go to the first free cell after the last written, so the tree never
  frees a cell in the middle of a parallel stage (hidden cells are parked);
- flash attention tiles calls of 64 query rows or more, and a row's result then
  depends on its tile: branch tokens go in calls of fewer rows (`BRANCH_CALL_ROWS`);
- one query row over 512 or more KV cells is split between threads, with
  rounding that depends on the cache size: a lone live branch in a big cache,
  or plain decoding of a long context, rounds differently (not avoidable);
- K-quant weights (Q4_K_M...) are repacked and use a tiled matmul from 8 rows
  on, both batch-dependent: ``exact_kernels=True`` turns them off.

Past these limits the tree computes the same function with other rounding:
greedy tokens can differ from plain decoding only where two logits are within
a few tenths (a near-tie).

One `llama_decode` call writes one append, so a step of k live branches is one
call with k tokens in k sequences. The only exception is an append that mixes
branch tokens and trunk tokens that must see them (the ``reuse`` merge writes
the branches' owed tokens and the close marker together): it is decoded as
consecutive runs, branch part first, which computes exactly the same thing.

Limits, each reported by a clear error rather than computed wrongly: a trunk
token must come at the position after every cell it sees (as in a merge); a
branch is started at the position right after its shared prefix; cells the
trunk already attends to cannot be hidden; `crop` cannot keep trunk cells at
positions after a cut merged branch. `LocalExecutor` never does any of these.

One llama.cpp context serves one answer at a time: `LlamaCppModel.new_tree`
clears the whole KV memory, and a tree made before it raises if used again.
Serving several answers concurrently from one context is a later step.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..masks import TRUNK

logger = logging.getLogger(__name__)

LLAMA_CPP_INSTALL = "pip install 'llama-cpp-python>=0.3.36' (it compiles llama.cpp: about 10 minutes on 2 cores)"
BRANCH_CALL_ROWS = 63
"""Most branch tokens per ``llama_decode``: llama.cpp's CPU flash attention switches to a tiled kernel at
64 query rows (``GGML_FA_TILE_Q``), where a row's result depends on the other rows of its tile. Below it,
every branch token computes exactly what it computes alone (titles of 16 branches take two calls)."""

DEFAULT_N_SEQ_MAX = 32
"""Sequences per context: the trunk, one for hidden cells, and up to 30 live branches (``max_branches`` is 16
by default; a block's branches are given back when the next block starts)."""

# Strings whose token ids must agree between the Hugging Face tokenizer and llama.cpp's own.
_TOKENIZER_PROBES = [
    "Hello, world!",
    " 12 + 7 = 19\n\n",
    "####Step one:%%%%\n####Two words:",
    "def f(x):\n    return x ** 2  # square",
    "naïve café, 東京, emoji 🙂",
]


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"the llama.cpp backend needs llama-cpp-python: {LLAMA_CPP_INSTALL}") from error
    return llama_cpp


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads are not counted); llama.cpp's thread default."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            blocks = f.read().split("\n\n")
        for block in blocks:
            fields = {}
            for line in block.splitlines():
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
            if "processor" not in fields:
                continue
            if allowed is not None and int(fields["processor"]) not in allowed:
                continue
            cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    except (OSError, ValueError):
        cores = set()
    if cores:
        return len(cores)
    return len(allowed) if allowed else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- the loaded model


class LlamaCppModel:
    """A GGUF model in one llama.cpp context; makes `LlamaCppTree`\\ s, one answer at a time.

    Build it with `load_llama_cpp`. Attributes: ``tokenizer`` (Hugging Face, from the same GGUF),
    ``eos_token_ids``, ``context_window`` (``n_ctx``: KV cells shared by the trunk and every branch),
    ``model_name``, ``n_vocab``, ``n_threads``, ``n_seq_max``, ``n_batch``.

    ``exact_kernels=True`` trades speed for row-invariant matrix products on K-quant weights (Q2_K..Q6_K,
    IQ*: Qwen2.5's Q4_K_M): no weight repacking and no tiled matmul (a process-wide switch, set through
    ``GGML_CPU_TILED_MM=0`` before llama.cpp first computes). Then, as with SmolLM2's Q4_1 weights by
    default, a branch token's logits do not depend on how many other rows its step has.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        n_seq_max: int = DEFAULT_N_SEQ_MAX,
        n_batch: int | None = None,
        n_gpu_layers: int | None = None,
        model_name: str | None = None,
        tokenizer: Any = None,
        exact_kernels: bool = False,
        verbose: bool = False,
    ) -> None:
        lc = _llama_cpp()
        self._lc = lc
        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        if not 3 <= n_seq_max <= 256:
            raise ValueError(
                f"n_seq_max must be in [3, 256] (the trunk, hidden cells and at least one branch), got {n_seq_max}"
            )
        if not verbose:
            _quiet_llama_cpp_logs(lc)
        self.path = path
        self.n_threads = int(n_threads or physical_cores())
        self.n_seq_max = int(n_seq_max)
        self.n_batch = int(n_batch or min(n_ctx, 2048))
        self._model = None
        self._ctx = None
        self._batch = None

        self.exact_kernels = exact_kernels
        if exact_kernels:
            _use_row_invariant_kernels()
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        if n_gpu_layers is not None:
            model_params.n_gpu_layers = n_gpu_layers
        if exact_kernels:
            model_params.use_extra_bufts = False  # no repacked weights: their gemm and gemv round differently
        self._model = lc.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, 512)
        params.n_seq_max = self.n_seq_max
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = True  # one cell pool: sequences share the prefix cells (seq_cp adds ids, no copy)
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq_max})")
        self._mem = lc.llama_get_memory(self._ctx)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self.context_window = int(lc.llama_n_ctx(self._ctx))
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self._token = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._n_seq_id = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self.n_batch,))
        self._output = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))
        self._seq_id = self._batch.seq_id
        self._generation = 0
        self.lock = threading.Lock()  # held by callers that share the context across threads

        eos = {int(lc.llama_vocab_eos(self._vocab)), int(lc.llama_vocab_eot(self._vocab))}
        self.eos_token_ids = frozenset(t for t in eos if 0 <= t < self.n_vocab)
        self.model_name = model_name or self._meta("general.name") or path.stem
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.tokenizer = tokenizer
        self._check_tokenizer()

    # ------------------------------------------------------------------ public

    def new_tree(self) -> LlamaCppTree:
        """An empty tree for one answer. Clears the context's KV memory: earlier trees become unusable."""
        self._lc.llama_memory_clear(self._mem, True)
        self._generation += 1
        return LlamaCppTree(self, self._generation)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """llama.cpp's own tokenization of ``text``."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (self._lc.llama_token * capacity)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if n < 0:
            buffer = (self._lc.llama_token * -n)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buffer, -n, add_special, parse_special)
        return list(buffer[:n])

    def close(self) -> None:
        """Free the context and the weights (also done when the object is collected)."""
        lc = getattr(self, "_lc", None)
        if lc is None:
            return
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
        self._generation += 1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ------------------------------------------------------------------ used by trees

    def _decode(self, ids: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[int]):
        """One ``llama_decode`` of ``len(ids) <= n_batch`` tokens; the logits of ``outputs`` (sorted batch
        indexes) as a float32 numpy view ``[len(outputs), n_vocab]`` into llama.cpp's buffer."""
        n = len(ids)
        assert 0 < n <= self.n_batch
        self._batch.n_tokens = n
        self._token[:n] = ids
        self._pos[:n] = positions
        self._n_seq_id[:n] = 1
        self._output[:n] = 0
        seq_id = self._seq_id
        for i, s in enumerate(seqs):
            seq_id[i][0] = s
        if outputs:
            self._output[list(outputs)] = 1
        status = self._lc.llama_decode(self._ctx, self._batch)
        if status != 0:
            if status == 1:
                raise RuntimeError(
                    f"llama.cpp's KV cache is full ({self.context_window} cells shared by the trunk and every "
                    "branch): load the model with a larger n_ctx"
                )
            raise RuntimeError(f"llama_decode failed with status {status} (see llama.cpp's log above)")
        if not outputs:
            return None
        pointer = self._lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(len(outputs), self.n_vocab))

    def _seq_pos_max(self, seq: int) -> int:
        return int(self._lc.llama_memory_seq_pos_max(self._mem, seq))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        if not self._lc.llama_memory_seq_rm(self._mem, seq, p0, p1):
            raise RuntimeError(f"llama_memory_seq_rm({seq}, {p0}, {p1}) failed")

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self._lc.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    # ------------------------------------------------------------------ loading helpers

    def _meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(256)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace") if n > 0 else None

    def _check_tokenizer(self) -> None:
        """The Hugging Face tokenizer must give llama.cpp's token ids, or text and logits would disagree."""
        probes = list(_TOKENIZER_PROBES)
        if getattr(self.tokenizer, "chat_template", None):
            probes.append(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
                )
            )
        for text in probes:
            theirs = self.tokenize(text)
            ours = list(self.tokenizer.encode(text, add_special_tokens=False))
            if theirs != ours:
                raise RuntimeError(
                    f"{self.path.name}: the Hugging Face tokenizer and llama.cpp tokenize {text!r} differently "
                    f"({ours} vs {theirs}); the llama.cpp backend needs identical token ids"
                )
        tokenizer_size = len(self.tokenizer)
        if tokenizer_size > self.n_vocab:
            raise RuntimeError(f"tokenizer has {tokenizer_size} tokens but the model's vocabulary has {self.n_vocab}")


def _use_row_invariant_kernels() -> None:
    """Turn off llama.cpp's tiled K-quant matmul (from 8 rows on), read once per process from the environment."""
    value = os.environ.setdefault("GGML_CPU_TILED_MM", "0")
    if value != "0":
        logger.warning("GGML_CPU_TILED_MM=%s: K-quant matmuls will not be row-invariant (exact_kernels)", value)


def _quiet_llama_cpp_logs(lc) -> None:
    """llama-cpp-python routes llama.cpp's log to its own logger, which prints everything by default."""
    try:
        from llama_cpp import _logger

        if _logger.logger.level == logging.NOTSET:
            _logger.logger.setLevel(logging.ERROR)
    except Exception:  # pragma: no cover - a private module of llama-cpp-python
        pass


def load_llama_cpp(
    gguf_path: str | os.PathLike,
    *,
    n_threads: int | None = None,
    n_ctx: int = 4096,
    n_seq_max: int = DEFAULT_N_SEQ_MAX,
    **kwargs: Any,
) -> LlamaCppModel:
    """Load a GGUF file into one llama.cpp context (CPU threads: the physical cores by default).

    ``n_ctx`` is the number of KV cells of the whole answer: the prefix once plus every branch's own
    tokens. ``n_seq_max`` bounds the branches alive at once (the trunk takes one sequence).
    Other keywords: ``n_batch``, ``n_gpu_layers`` (GPU builds), ``model_name``, ``tokenizer``,
    ``exact_kernels`` (see `LlamaCppModel`), ``verbose``.
    """
    return LlamaCppModel(gguf_path, n_threads=n_threads, n_ctx=n_ctx, n_seq_max=n_seq_max, **kwargs)


def resolve_gguf(source: str | os.PathLike) -> tuple[Path, str]:
    """``(gguf path, display name)`` for ``"default"``, ``"qwen2.5-coder-0.5b"`` or a ``.gguf`` path."""
    from ..loading import KNOWN_MODELS, default_gguf_path, qwen_gguf_path

    source = str(source)
    if source == "default":
        return default_gguf_path(), KNOWN_MODELS["default"].display_name
    if source == "qwen2.5-coder-0.5b":
        return qwen_gguf_path(), KNOWN_MODELS["qwen2.5-coder-0.5b"].display_name
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return path, path.stem
    raise ValueError(
        f"the llama.cpp backend loads GGUF files: use 'default', 'qwen2.5-coder-0.5b' or a .gguf path, got {source!r}"
    )


# --------------------------------------------------------------------------- the tree


@dataclass
class _Branch:
    """A live branch: its llama.cpp sequence and what it holds."""

    seq: int  # llama.cpp sequence id
    ctx_end: int  # slot where its shared prefix ends
    start: int  # position of its first own cell (its prefix cells lie below)
    merged: int  # own cells at positions [start, merged) also belong to the trunk sequence
    first_slot: int
    last_slot: int
    slots: int = 0  # slots of this branch in the tree, hidden ones included


class LlamaCppTree:
    """A `pbd_core.executors.tree.TokenTree` over a llama.cpp context (see the module docstring)."""

    def __init__(self, model: LlamaCppModel, generation: int) -> None:
        self.model = model
        self._generation = generation
        self._slot_seq: list[int] = []  # llama.cpp sequence holding the slot's cell; -1 once hidden
        self._slot_pos: list[int] = []
        self._slot_branch: list[int] = []  # branch id, TRUNK for shared text
        self._branches: dict[int, _Branch] = {}  # live branch id -> its sequence
        self._closed: set[int] = set()  # branches folded into the trunk sequence when a later block started
        self._grave = model.n_seq_max - 1  # holds hidden cells (see `hide`); nobody attends to it
        self._free = list(range(self._grave - 1, 0, -1))  # free sequence ids; 0 is the trunk
        self.decode_calls = 0

    def __len__(self) -> int:
        return len(self._slot_seq)

    # ------------------------------------------------------------------ append

    def append(
        self,
        ids: Sequence[int],
        branch: Sequence[int],
        position: Sequence[int],
        ctx_end: Sequence[int] | int | None,
        keep: Sequence[int] | None,
    ) -> torch.Tensor:
        self._check_current()
        n = len(ids)
        assert n > 0 and len(branch) == n and len(position) == n, (n, len(branch), len(position))
        if ctx_end is None:
            ends = [TRUNK] * n
        elif isinstance(ctx_end, int):
            ends = [ctx_end] * n
        else:
            ends = [int(c) for c in ctx_end]
            assert len(ends) == n
        ids = [int(t) for t in ids]
        branch = [int(b) for b in branch]
        position = [int(p) for p in position]
        keep = [n - 1] if keep is None else [int(k) for k in keep]
        is_trunk = []
        for i in range(n):
            if (ends[i] == TRUNK) != (branch[i] == TRUNK):
                raise NotImplementedError(
                    "llama.cpp tree: a token is either a trunk token (branch TRUNK, trunk semantics) or a "
                    f"branch token with its block's ctx_end; got branch {branch[i]} with ctx_end {ends[i]}"
                )
            is_trunk.append(branch[i] == TRUNK)

        # Runs of trunk / branch tokens, one llama_decode each (long runs are cut, see BRANCH_CALL_ROWS).
        runs, start = [], 0
        for i in range(1, n + 1):
            limit = self.model.n_batch if is_trunk[start] else min(self.model.n_batch, BRANCH_CALL_ROWS)
            if i == n or is_trunk[i] != is_trunk[start] or i - start == limit:
                runs.append((start, i))
                start = i
        out = torch.empty((len(keep), self.model.n_vocab), dtype=torch.float32)
        rows_of: dict[int, list[int]] = {}
        for row, index in enumerate(keep):
            if not 0 <= index < n:
                raise IndexError(f"keep index {index} outside the {n} appended tokens")
            rows_of.setdefault(index, []).append(row)
        for a, b in runs:
            first_slot = len(self)
            if is_trunk[a]:
                seqs = self._prepare_trunk(position[a:b])
            else:
                seqs = self._prepare_branches(branch[a:b], ends[a:b], position[a:b], first_slot)
            outputs = sorted(i - a for i in rows_of if a <= i < b)
            logits = self.model._decode(ids[a:b], position[a:b], seqs, outputs)
            self.decode_calls += 1
            for i in range(a, b):
                slot = first_slot + i - a
                self._slot_seq.append(seqs[i - a])
                self._slot_pos.append(position[i])
                self._slot_branch.append(branch[i])
                if not is_trunk[i]:
                    record = self._branches[branch[i]]
                    record.slots += 1
                    record.last_slot = slot
            if outputs:
                table = torch.from_numpy(logits)
                for j, i in enumerate(outputs):
                    for row in rows_of[a + i]:
                        out[row] = table[j]  # copies: llama.cpp reuses its buffer on the next decode
        return out

    def _prepare_trunk(self, positions: list[int]) -> list[int]:
        """Trunk tokens see every cell written before them: fold the branches' cells into sequence 0."""
        _check_consecutive(positions, "trunk")
        for record in self._branches.values():
            self._merge_into_trunk(record)
        last = self.model._seq_pos_max(0)
        if last >= 0 and positions[0] != last + 1:
            raise NotImplementedError(
                f"llama.cpp tree: the trunk goes on at position {positions[0]} but it already sees a cell at "
                f"position {last}; llama.cpp needs the next position ({last + 1}): a trunk token after branches "
                "must come after the longest branch"
            )
        return [0] * len(positions)

    def _merge_into_trunk(self, record: _Branch) -> None:
        end = self.model._seq_pos_max(record.seq) + 1
        if end > record.merged:
            self.model._seq_cp(record.seq, 0, record.merged, -1)  # adds sequence 0 to the branch's new cells
            record.merged = end

    def _prepare_branches(self, branch: list[int], ends: list[int], positions: list[int], first_slot: int) -> list[int]:
        seqs, first_pos = [], {}
        for offset, (b, c, p) in enumerate(zip(branch, ends, positions)):
            record = self._branches.get(b)
            if record is None:
                record = self._start_branch(b, c, p, first_slot + offset)
            elif record.ctx_end != c:
                raise NotImplementedError(
                    f"llama.cpp tree: branch {b} was started with ctx_end {record.ctx_end}, got {c}"
                )
            seqs.append(record.seq)
            first_pos.setdefault(record.seq, (b, p, []))[2].append(p)
        for seq, (b, p, ps) in first_pos.items():
            _check_consecutive(ps, f"branch {b}")
            last = self.model._seq_pos_max(seq)
            if last >= 0 and p != last + 1:
                raise NotImplementedError(
                    f"llama.cpp tree: branch {b} goes on at position {p} but its last visible cell is at "
                    f"position {last}; llama.cpp needs position {last + 1}"
                )
        return seqs

    def _start_branch(self, b: int, ctx_end: int, position: int, first_slot: int) -> _Branch:
        if b in self._closed:
            raise NotImplementedError(f"llama.cpp tree: branch {b}'s block was closed when a later block started")
        # Branches of earlier blocks (all their slots before this prefix end) are part of the prefix:
        # fold them into the trunk sequence and give their sequence ids back.
        for old_id, old in list(self._branches.items()):
            if old.last_slot < ctx_end:
                self._merge_into_trunk(old)
                self.model._seq_rm(old.seq, -1, -1)
                self._free.append(old.seq)
                del self._branches[old_id]
                self._closed.add(old_id)
                for slot in range(old.first_slot, old.last_slot + 1):
                    if self._slot_branch[slot] == old_id and self._slot_seq[slot] >= 0:
                        self._slot_seq[slot] = 0
            elif old.first_slot < ctx_end:
                raise NotImplementedError(
                    f"llama.cpp tree: branch {b}'s prefix ends at slot {ctx_end}, inside branch {old_id}"
                )
        if not self._free:
            raise RuntimeError(
                f"llama.cpp tree: more than {self.model.n_seq_max - 2} branches alive at once; "
                "load the model with a larger n_seq_max"
            )
        # The prefix: the trunk's cells at slots before ctx_end, as one position range [0, bound).
        before = [p for s, p in zip(self._slot_seq[:ctx_end], self._slot_pos[:ctx_end]) if s == 0]
        after = [p for s, p in zip(self._slot_seq[ctx_end:], self._slot_pos[ctx_end:]) if s == 0]
        # Cells of this block's branches that the trunk already sees (a branch joining a merged block).
        after += [r.start for r in self._branches.values() if r.first_slot >= ctx_end and r.merged > r.start]
        bound = min(after) if after else -1
        if before and after and max(before) >= bound:
            raise NotImplementedError(
                f"llama.cpp tree: trunk cells before and after slot {ctx_end} overlap in positions; "
                "crop the trunk to the block's start before starting branches"
            )
        seq = self._free.pop()
        if ctx_end > 0:
            self.model._seq_cp(0, seq, 0, bound)  # shares the prefix cells: no data is copied
        record = _Branch(seq=seq, ctx_end=ctx_end, start=position, merged=position, first_slot=first_slot,
                         last_slot=first_slot)
        self._branches[b] = record
        return record

    # ------------------------------------------------------------------ crop and hide

    def crop(self, length: int) -> None:
        self._check_current()
        assert 0 <= length <= len(self), (length, len(self))
        if length == len(self):
            return
        cut: dict[int, int] = {}  # branch id -> lowest dropped position of its own cells
        trunk_cut = grave_cut = None
        dropped_slots: dict[int, int] = {}
        for slot in range(length, len(self)):
            b, s, p = self._slot_branch[slot], self._slot_seq[slot], self._slot_pos[slot]
            if s < 0:
                grave_cut = p if grave_cut is None else min(grave_cut, p)
            if b in self._branches:
                dropped_slots[b] = dropped_slots.get(b, 0) + 1
                if s >= 0:
                    cut[b] = min(cut.get(b, p), p)
            elif s == 0:
                trunk_cut = p if trunk_cut is None else min(trunk_cut, p)
        for b, p in cut.items():
            record = self._branches[b]
            if p < record.merged:  # the trunk sequence holds these cells too
                trunk_cut = p if trunk_cut is None else min(trunk_cut, p)
        if trunk_cut is not None:
            kept = [slot for slot in range(length) if self._slot_seq[slot] == 0 and self._slot_pos[slot] >= trunk_cut]
            if kept:
                raise NotImplementedError(
                    f"llama.cpp tree: crop({length}) would also remove trunk cells at positions >= {trunk_cut} "
                    f"that slots {kept[:4]}... keep"
                )
        if grave_cut is not None:  # (frees hidden cells; kept hidden ones are invisible either way)
            self.model._seq_rm(self._grave, grave_cut, -1)
        for b, p in cut.items():
            record = self._branches[b]
            self.model._seq_rm(record.seq, p, -1)
            record.merged = min(record.merged, max(p, record.start))
        if trunk_cut is not None:
            self.model._seq_rm(0, trunk_cut, -1)
            for b, record in self._branches.items():  # cells of kept branches the trunk still sees
                low = max(trunk_cut, record.start)
                if record.merged > low:
                    self.model._seq_cp(record.seq, 0, low, record.merged)
        for b, count in dropped_slots.items():
            record = self._branches[b]
            record.slots -= count
            if record.slots == 0:
                self.model._seq_rm(record.seq, -1, -1)
                self._free.append(record.seq)
                del self._branches[b]
            else:
                record.last_slot = max(s for s in range(record.first_slot, length) if self._slot_branch[s] == b)
        del self._slot_seq[length:]
        del self._slot_pos[length:]
        del self._slot_branch[length:]

    def hide(self, slots: Sequence[int]) -> None:
        self._check_current()
        hidden = sorted({int(s) for s in slots if self._slot_seq[int(s)] >= 0})
        if not hidden:
            return
        by_seq: dict[int, list[int]] = {}
        for slot in hidden:
            by_seq.setdefault(self._slot_seq[slot], []).append(slot)
        plan = []
        for seq, group in by_seq.items():
            low = min(self._slot_pos[s] for s in group)
            chosen = set(group)
            rest = [
                s
                for s, (q, p) in enumerate(zip(self._slot_seq, self._slot_pos))
                if q == seq and p >= low and s not in chosen
            ]
            if rest:
                raise NotImplementedError(
                    f"llama.cpp tree: only the newest cells of a sequence can be hidden (slots {rest[:4]} stay)"
                )
            if seq == 0:
                merged = [b for b, r in self._branches.items() if r.merged > max(low, r.start)]
                sharing = [b for b, r in self._branches.items() if r.start > low]
                if merged or sharing:
                    raise NotImplementedError("llama.cpp tree: cannot hide trunk cells that branches share")
            else:
                b = self._slot_branch[group[0]]
                if low < self._branches[b].merged:
                    raise NotImplementedError(
                        f"llama.cpp tree: branch {b}'s cells at positions >= {low} are already seen by the trunk"
                    )
            plan.append((seq, low, group))
        for seq, low, group in plan:
            # Hand the cells to the graveyard sequence instead of freeing them: a freed cell is a hole
            # that the next token of a live branch would fill, out of position order, and llama.cpp's
            # attention sums cells in cell order, so the result would no longer be bit-identical.
            self.model._seq_cp(seq, self._grave, low, -1)
            self.model._seq_rm(seq, low, -1)
            for slot in group:
                self._slot_seq[slot] = -1

    # ------------------------------------------------------------------ helpers

    def _check_current(self) -> None:
        if self._generation != self.model._generation:
            raise RuntimeError(
                "this llama.cpp tree is stale: its context was cleared by a newer tree "
                "(one context serves one answer at a time)"
            )


def _check_consecutive(positions: list[int], what: str) -> None:
    for a, b in zip(positions, positions[1:]):
        if b != a + 1:
            raise NotImplementedError(
                f"llama.cpp tree: {what} positions in one append must be consecutive, got {a}, {b}"
            )
