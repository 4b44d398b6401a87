"""Constrained decoding hook: one constraint state per stream.

The engine knows nothing about grammars. It asks a `TokenConstraint` to mask
a stream's logits before sampling and tells it which token was chosen. The
JSON-schema grammar used for tool calls and structured output lives in
`pbd_integrations` (built on llguidance) and implements this protocol. Each
branch gets its own instance, so constraints compose with parallel decoding.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenConstraint(Protocol):
    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits`` (shape ``[vocab]``) with forbidden tokens set to ``-inf``. May modify in place."""
        ...

    def advance(self, token_id: int) -> None:
        """Record that ``token_id`` was sampled for this stream."""
        ...

    def is_finished(self) -> bool:
        """True once the constrained text is complete: the stream then ends with ``finish_reason="stop"``."""
        ...
