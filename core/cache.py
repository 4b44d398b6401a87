"""One KV cache for the trunk and every branch, plus the slot metadata the mask needs.

`TreeCache` wraps a transformers `DynamicCache` (the KV tensors) and a
`SlotTable` that keeps, for each slot, which branch wrote it, its position id and how far back it may
look (see `pbd_core.masks`). It answers the question the decode loop asks
every step: "what is the mask for these next tokens?". Rolling back (a plan
that is replaced by branches, a merge that re-encodes them) crops both the
KV tensors and the metadata together, so they can never disagree.

All metadata lives on the model's device: building a mask is a handful of
vectorised ops, no Python loop over slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .masks import TRUNK, to_additive, tree_predicate, window_predicate


class SlotTable:
    """Per-slot ``branch``/``position``/``ctx_end``/``visible`` of one answer, and the masks they imply.

    The tree rule needs only these numbers, so the same table serves an answer with a KV cache of
    its own (`TreeCache`) and an answer whose slots live in a cache shared with other answers
    (`pbd_core.executors.forest.ForestTree`, which scatters the rows into its own columns).
    """

    def __init__(self, device: torch.device, layer_windows: dict[str, int | None] | None = None) -> None:
        self.device = device
        self.layer_windows = layer_windows
        empty = torch.empty(0, dtype=torch.long, device=device)
        self.branch = empty.clone()  # [L]
        self.position = empty.clone()  # [L]
        self.ctx_end = empty.clone()  # [L]
        self.visible = torch.empty(0, dtype=torch.bool, device=device)  # [L]; False: hidden from later tokens
        # True while the slots are one plain causal sequence (trunk only, nothing hidden, position == slot).
        # Trunk tokens then need no custom mask at all, and the model's own causal path is used (for GQA
        # models it is faster: sdpa can skip repeating the KV heads when no mask is given).
        self.linear = True

    def __len__(self) -> int:
        return int(self.branch.numel())

    def add(
        self,
        branch: Sequence[int] | torch.Tensor,
        position: Sequence[int] | torch.Tensor,
        ctx_end: Sequence[int] | torch.Tensor | int | None = None,
    ) -> dict[str | None, torch.Tensor]:
        """Describe the next ``n`` slots; return what each may see (bool ``[n, L + n]`` per layer type, the key
        ``None`` when the model takes a single mask). Afterwards ``linear`` says whether the slots are
        still one plain causal sequence (then the model's own causal mask is the same rule).

        ``ctx_end=None`` means trunk semantics (each token sees every slot before it); so does a ``TRUNK``
        entry in a ``ctx_end`` list, which lets one pass mix branch and trunk tokens.
        """
        start = len(self)
        is_trunk = ctx_end is None and all(int(b) == TRUNK for b in branch)
        self.linear = self.linear and is_trunk
        q_branch = torch.as_tensor(branch, dtype=torch.long, device=self.device)
        q_position = torch.as_tensor(position, dtype=torch.long, device=self.device)
        n = q_branch.numel()
        q_slot = torch.arange(start, start + n, device=self.device)
        if ctx_end is None:
            q_ctx_end = q_slot + 1
        else:
            q_ctx_end = torch.as_tensor(ctx_end, dtype=torch.long, device=self.device).expand(n)
            q_ctx_end = torch.where(q_ctx_end == TRUNK, q_slot + 1, q_ctx_end)
        self.branch = torch.cat([self.branch, q_branch])
        self.position = torch.cat([self.position, q_position])
        self.ctx_end = torch.cat([self.ctx_end, q_ctx_end])
        self.visible = torch.cat([self.visible, torch.ones(n, dtype=torch.bool, device=self.device)])
        kv_slot = torch.arange(len(self), device=self.device)
        allowed = tree_predicate(q_slot, q_branch, q_ctx_end, kv_slot, self.branch) & self.visible[None, :]
        if self.layer_windows is None:
            return {None: allowed}
        return {
            kind: allowed & window_predicate(q_position, self.position, window) if window is not None else allowed
            for kind, window in self.layer_windows.items()
        }

    def crop(self, length: int) -> None:
        """Keep the first ``length`` slots."""
        assert 0 <= length <= len(self), (length, len(self))
        self.branch = self.branch[:length]
        self.position = self.position[:length]
        self.ctx_end = self.ctx_end[:length]
        self.visible = self.visible[:length]
        if not self.linear:
            self.linear = not bool((self.branch != TRUNK).any()) and bool(self.visible.all())

    def hide(self, slots: Sequence[int]) -> None:
        """Hide slots from every token written after now (text that turned out not to belong to a branch)."""
        if len(slots):
            self.visible[torch.tensor(list(slots), device=self.device)] = False
            self.linear = False

    def dense_mask(self) -> torch.Tensor:
        """``[L, L]`` boolean: which slot each slot attended to (full-attention layers)."""
        kv_slot = torch.arange(len(self), device=self.device)
        return tree_predicate(kv_slot, self.branch, self.ctx_end, kv_slot, self.branch)


class TreeCache:
    """A KV cache of one answer and its `SlotTable`.

    Args:
        device: where the metadata and masks live (the model's device).
        mask_dtype: dtype of the additive masks (the model's compute dtype).
        layer_windows: ``{layer_type: window or None}`` when the model mixes
            full and sliding-window layers and accepts a mask per layer type;
            ``None`` for a model that takes a single mask.
    """

    def __init__(
        self,
        device: torch.device,
        mask_dtype: torch.dtype,
        layer_windows: dict[str, int | None] | None = None,
    ) -> None:
        self.kv = DynamicCache()  # all full layers: sliding windows are enforced by the mask, in positions
        self.device = device
        self.mask_dtype = mask_dtype
        self.layer_windows = layer_windows
        self.slots = SlotTable(device, layer_windows)

    def __len__(self) -> int:
        return len(self.slots)

    # The slot metadata, read by tests and pictures.
    branch = property(lambda self: self.slots.branch)
    position = property(lambda self: self.slots.position)
    ctx_end = property(lambda self: self.slots.ctx_end)
    visible = property(lambda self: self.slots.visible)
    linear = property(lambda self: self.slots.linear)

    def plan_append(
        self,
        branch: Sequence[int] | torch.Tensor,
        position: Sequence[int] | torch.Tensor,
        ctx_end: Sequence[int] | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor] | None]:
        """Describe the next ``n`` tokens and return ``(position_ids [1, n], attention mask)``.

        The mask is ``None`` while the cache is a plain causal sequence: the model's
        own causal masking is then exactly the tree rule. The metadata is committed
        immediately: call this right before the forward pass that writes these slots,
        and `crop` if the pass is abandoned.
        """
        allowed = self.slots.add(branch, position, ctx_end)
        position_ids = self.slots.position[len(self) - len(branch) :][None]
        if self.slots.linear:
            return position_ids, None
        if self.layer_windows is None:
            return position_ids, to_additive(allowed[None], self.mask_dtype)
        return position_ids, {kind: to_additive(a, self.mask_dtype) for kind, a in allowed.items()}

    def crop(self, length: int) -> None:
        """Roll the cache back to its first ``length`` slots."""
        assert 0 <= length <= len(self), (length, len(self))
        drop = len(self) - length
        if drop:
            self.kv.crop(-drop)
        self.slots.crop(length)

    def hide(self, slots: list[int]) -> None:
        """Hide slots from every token written after now (text that turned out not to belong to a branch)."""
        self.slots.hide(slots)

    def dense_mask(self) -> torch.Tensor:
        """``[L, L]`` boolean: which slot each slot attended to (full-attention layers)."""
        return self.slots.dense_mask()


def trunk(n: int) -> list[int]:
    """Branch ids for ``n`` trunk tokens."""
    return [TRUNK] * n
