"""The tree mask equals a brute-force reading of the rule, on hand-built layouts."""

import random

import torch

from pbd_core.cache import TreeCache
from pbd_core.masks import TRUNK, dense_tree_mask, to_additive, tree_predicate, window_predicate


def brute_force(branch: list[int], ctx_end: list[int]) -> list[list[bool]]:
    """Rule by rule, one pair at a time: causal, and shared context or same branch."""
    n = len(branch)
    return [[k <= q and (k < ctx_end[q] or branch[k] == branch[q]) for k in range(n)] for q in range(n)]


def random_layout(rng: random.Random) -> tuple[list[int], list[int]]:
    """Prefix, then a block of interleaved branches, then trunk tokens, then a second block."""
    branch, ctx_end = [], []
    for _ in range(rng.randint(1, 5)):  # prefix
        branch.append(TRUNK)
        ctx_end.append(len(branch))
    next_id = 0
    for _block in range(2):
        start = len(branch)
        ids = list(range(next_id, next_id + rng.randint(1, 4)))
        next_id += len(ids)
        for _ in range(rng.randint(1, 12)):
            branch.append(rng.choice(ids))
            ctx_end.append(start)
        for _ in range(rng.randint(0, 3)):  # merge text
            branch.append(TRUNK)
            ctx_end.append(len(branch))
    return branch, ctx_end


def test_tree_predicate_matches_brute_force_on_random_layouts():
    rng = random.Random(0)
    for _ in range(200):
        branch, ctx_end = random_layout(rng)
        got = dense_tree_mask(torch.tensor(branch), torch.tensor(ctx_end)).tolist()
        assert got == brute_force(branch, ctx_end)


def test_docstring_picture_prefix_two_branches_and_merge():
    # P P P A B A B B M  (A = branch 0, B = branch 1, block starts at slot 3)
    branch = [TRUNK] * 3 + [0, 1, 0, 1, 1] + [TRUNK]
    ctx_end = [1, 2, 3, 3, 3, 3, 3, 3, 9]
    rows = ["".join("x" if v else "." for v in row) for row in dense_tree_mask(torch.tensor(branch), torch.tensor(ctx_end)).tolist()]
    assert rows[3:] == ["xxxx.....", "xxx.x....", "xxxx.x...", "xxx.x.x..", "xxx.x.xx.", "xxxxxxxxx"]


def test_branches_never_see_siblings_and_merge_sees_everything():
    branch = [TRUNK, TRUNK, 0, 1, 2, 0, 1, 2, TRUNK]
    ctx_end = [1, 2, 2, 2, 2, 2, 2, 2, 9]
    mask = dense_tree_mask(torch.tensor(branch), torch.tensor(ctx_end))
    for q in range(2, 8):
        for k in range(2, 8):
            if branch[q] != branch[k]:
                assert not mask[q, k]
    assert mask[8].all()


def test_window_predicate_counts_positions_not_slots():
    q_position = torch.tensor([10])
    kv_position = torch.tensor([0, 5, 7, 8, 9, 10])
    assert window_predicate(q_position, kv_position, 3).tolist() == [[False, False, False, True, True, True]]


def test_additive_mask_is_zero_where_allowed_and_dtype_min_elsewhere():
    allowed = torch.tensor([[True, False], [True, True]])
    for dtype in (torch.float32, torch.bfloat16):
        mask = to_additive(allowed, dtype)
        assert mask.shape == (1, 1, 2, 2) and mask.dtype == dtype
        assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(dtype).min


def test_tree_cache_mask_for_next_tokens_and_crop():
    cache = TreeCache(torch.device("cpu"), torch.float32)
    cache.plan_append([TRUNK] * 3, [0, 1, 2])  # prefix
    positions, mask = cache.plan_append([0, 0, 1], [3, 4, 3], ctx_end=3)  # two titles, prefilled together
    assert positions.tolist() == [[3, 4, 3]]
    allowed = (mask[0, 0] == 0).tolist()
    assert allowed == [
        [True, True, True, True, False, False],
        [True, True, True, True, True, False],
        [True, True, True, False, False, True],
    ]
    _, mask = cache.plan_append([1, TRUNK], [4, 5], ctx_end=[3, TRUNK])  # a branch token and a merge token
    assert (mask[0, 0, 0] == 0).tolist() == [True, True, True, False, False, True, True, False]
    assert (mask[0, 0, 1] == 0).tolist() == [True] * 8
    cache.crop(3)
    assert len(cache) == 3 and cache.branch.tolist() == [TRUNK] * 3


def test_sliding_layers_get_their_own_mask():
    cache = TreeCache(torch.device("cpu"), torch.float32, {"full_attention": None, "sliding_attention": 2})
    cache.plan_append([TRUNK] * 4, [0, 1, 2, 3])
    _, masks = cache.plan_append([0], [4], ctx_end=4)  # a branch token at position 4
    assert (masks["full_attention"][0, 0, 0] == 0).tolist() == [True] * 5
    assert (masks["sliding_attention"][0, 0, 0] == 0).tolist() == [False, False, False, True, True]


def test_tree_predicate_broadcasts_queries_against_cache():
    got = tree_predicate(
        torch.tensor([4]), torch.tensor([1]), torch.tensor([2]), torch.arange(5), torch.tensor([TRUNK, TRUNK, 0, 1, 1])
    )
    assert got.tolist() == [[True, True, False, True, True]]


def test_plain_causal_prefix_needs_no_custom_mask_until_a_branch_appears():
    cache = TreeCache(torch.device("cpu"), torch.float32)
    _, mask = cache.plan_append([TRUNK] * 3, [0, 1, 2])
    assert mask is None and cache.linear
    _, mask = cache.plan_append([0], [3], ctx_end=3)
    assert mask is not None and not cache.linear
    _, mask = cache.plan_append([TRUNK], [4])
    assert mask is not None  # the trunk now follows a branch: positions and visibility are no longer plain
    cache.crop(3)  # a recompute merge rolls the branches back
    assert cache.linear
    _, mask = cache.plan_append([TRUNK], [3])
    assert mask is None
