"""The tree attention mask: who may attend to whom inside one sequence.

Every cache slot carries three numbers, kept by `pbd_core.cache.TreeCache`:

- ``branch``: the branch that wrote it, or ``TRUNK`` (-1) for shared text
  (prompt, plan, conclusion);
- ``position``: its position id (branches restart from the block's start, so
  each branch has exactly the positions it would have if decoded alone);
- ``ctx_end``: the first slot this token may *not* see unless it belongs to
  its own branch. For a branch token that is the slot where its block starts;
  for a trunk token it is its own slot + 1 (it sees everything before it).

The rule is one line::

    allowed(q, k) = k <= q  AND  (k < ctx_end[q]  OR  branch[k] == branch[q])

Picture for a prefix of 3 slots (P) and two branches A (2 slots) and B
(3 slots) laid out A, B, A, B, B (decode order interleaves them), followed by
a trunk token M of the merge::

             kv:  P P P A B A B B M
    q = A  (3)    x x x x . . . . .
    q = B  (4)    x x x . x . . . .
    q = A  (5)    x x x x . x . . .      <- A never sees B, B never sees A
    q = B  (6)    x x x . x . x . .
    q = B  (7)    x x x . x . x x .
    q = M  (8)    x x x x x x x x x      <- the merge sees every branch

Layers with a sliding window additionally require
``position[q] - position[k] < window``: the window is measured in positions,
which is what the branch would see if decoded alone.

Masks are additive floats (0 where allowed, the dtype's minimum elsewhere):
transformers passes a 4D mask through unchanged, and an additive float mask
is honoured by both the ``sdpa`` and ``eager`` attention paths (a boolean 4D
mask is silently wrong under ``eager``).
"""

from __future__ import annotations

import torch

TRUNK = -1
"""Branch id of shared (non-branch) slots."""


def tree_predicate(
    q_slot: torch.Tensor,
    q_branch: torch.Tensor,
    q_ctx_end: torch.Tensor,
    kv_slot: torch.Tensor,
    kv_branch: torch.Tensor,
) -> torch.Tensor:
    """``causal AND (shared context OR same branch)``, broadcast over ``[q, 1]`` x ``[1, kv]``."""
    causal = kv_slot[None, :] <= q_slot[:, None]
    shared = kv_slot[None, :] < q_ctx_end[:, None]
    same_branch = kv_branch[None, :] == q_branch[:, None]
    return causal & (shared | same_branch)  # [q, kv]


def window_predicate(q_position: torch.Tensor, kv_position: torch.Tensor, window: int) -> torch.Tensor:
    """A sliding-window layer sees the last ``window`` positions (``q - k < window``)."""
    return (q_position[:, None] - kv_position[None, :]) < window  # [q, kv]


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``[q, kv]`` -> additive float ``[1, 1, q, kv]`` (0 allowed, dtype min forbidden)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)[None, None]


def dense_tree_mask(branch: torch.Tensor, ctx_end: torch.Tensor) -> torch.Tensor:
    """The full ``[L, L]`` boolean mask of a whole sequence (for inspection and pictures)."""
    slots = torch.arange(branch.numel(), device=branch.device)
    return tree_predicate(slots, branch, ctx_end, slots, branch)
