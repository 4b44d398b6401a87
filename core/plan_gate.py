"""A list of one title is not a plan (``DecodeOptions.single_title_plans``).

Asked to write independent steps as ``####<title>:`` branches where a request
splits, a small model also opens the format on requests with nothing to split:
Qwen2.5-Coder-0.5B, given the adapters' planning instructions, listed exactly
one title for 5 of 6 haikus and 5 of 6 one-sentence rewrites of the quality
suite (``####Morning Tea:`` then the haiku, then a conclusion). A block of one
branch decodes nothing in parallel; it only wraps a direct answer in a title
and a conclusion.

When the model closes its own list after one title, the engine drops the list
(it was never part of the context: `pbd_core.stages` rolls a list back before
the branches start) and decodes on from the same place with `NoMarkerFirst`:
the first token may not start with ``#``, so the model takes its next choice
and answers directly. This happens at most once per answer; a forced plan
(``force_plan``) or caller-given titles are never touched. It needs logits in
this process (`LocalExecutor`); on a server a one-title list stays a block.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .detokenize import token_texts


class NoMarkerFirst:
    """A `TokenConstraint` for one stream: its first token may not start with ``#`` (spaces aside)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.first = True

    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        if self.first:
            banned = _marker_tokens(self.tokenizer)
            logits[..., banned[banned < logits.shape[-1]].to(logits.device)] = float("-inf")
        return logits

    def advance(self, token_id: int) -> None:
        self.first = False

    def is_finished(self) -> bool:
        return False


@functools.lru_cache(maxsize=8)
def _marker_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of the tokens whose text starts with ``#`` after any spaces (found once per tokenizer)."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if t.lstrip().startswith("#")], dtype=torch.long)
