"""`TorchTree`: a transformers model and one KV cache under a tree attention mask.

The in-process executor's forward passes. Every call writes the next slots of
the `TreeCache` and runs the model once with the mask the cache builds for
them (``causal AND (shared prefix OR same branch)``, see `pbd_core.masks`)
and the tokens' own position ids, so a branch token computes exactly what it
would compute if its branch were decoded alone. Logits are computed only for
the rows the caller keeps (the ``lm_head`` is a large part of a step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..cache import TreeCache


class TorchTree:
    """A `pbd_core.executors.tree.TokenTree` over a transformers causal LM."""

    def __init__(self, model, device: torch.device, mask_dtype: torch.dtype, layer_windows=None) -> None:
        self.model = model
        self.device = device
        self.cache = TreeCache(device, mask_dtype, layer_windows)
        self.slot_ids: list[int] = []  # token id of every slot, in slot order

    def __len__(self) -> int:
        return len(self.cache)

    def append(
        self,
        ids: Sequence[int],
        branch: Sequence[int],
        position: Sequence[int],
        ctx_end: Sequence[int] | int | None,
        keep: Sequence[int] | None,
    ) -> torch.Tensor:
        assert len(ids) == len(branch) == len(position) and len(ids) > 0
        position_ids, mask = self.cache.plan_append(branch, position, ctx_end)
        self.slot_ids.extend(ids)
        if keep is None:
            logits_to_keep: int | torch.Tensor = 1
        elif len(keep) == len(ids) and list(keep) == list(range(len(ids))):
            logits_to_keep = 0
        else:
            logits_to_keep = torch.tensor(list(keep), device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([list(ids)], device=self.device),
                position_ids=position_ids,
                attention_mask=mask,
                past_key_values=self.cache.kv,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        return out.logits[0].float()

    def crop(self, length: int) -> None:
        self.cache.crop(length)
        del self.slot_ids[length:]

    def hide(self, slots: Sequence[int]) -> None:
        self.cache.hide(list(slots))
