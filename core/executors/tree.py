"""The forward-pass interface of in-process executors: one answer's token tree.

`LocalExecutor` (sampling, budgets, constraints) runs over any `TokenTree`.
A tree holds the KV of one answer as *slots* in write order. Each slot has a
branch id (`pbd_core.masks.TRUNK` for shared text), a position id and a
context end: a trunk token sees every visible slot before it; a branch token
sees the slots before its block's ``ctx_end`` (the shared prefix) and the
earlier slots of its own branch. Two implementations:

- `pbd_core.executors.tree_mask.TorchTree`: a transformers model, one
  `DynamicCache`, and an additive tree mask built from the slot metadata;
- `pbd_core.executors.llama_cpp.LlamaCppTree`: a llama.cpp context whose
  unified KV cache gives each branch its own sequence id; the prefix cells
  are shared between sequences, so the mask is native.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class TokenTree(Protocol):
    def __len__(self) -> int:
        """Number of slots written (hidden ones included)."""
        ...

    def append(
        self,
        ids: Sequence[int],
        branch: Sequence[int],
        position: Sequence[int],
        ctx_end: Sequence[int] | int | None,
        keep: Sequence[int] | None,
    ) -> torch.Tensor:
        """Write ``ids`` as the next slots in one forward pass; return float logits ``[rows, vocab]``.

        ``branch[i]``/``position[i]``: branch id and position id of token ``i``. ``ctx_end``: ``None`` for
        trunk semantics, else (per token or for all) the slot where the shared prefix of the token's block
        ends (a ``TRUNK`` entry in a list means trunk semantics for that token). ``keep``: indexes of the
        tokens whose logits are returned, in that order; ``None`` means only the last token.
        """
        ...

    def crop(self, length: int) -> None:
        """Drop every slot from ``length`` on."""
        ...

    def hide(self, slots: Sequence[int]) -> None:
        """Make ``slots`` invisible to every token written from now on (text cut from a branch)."""
        ...
