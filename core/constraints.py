"""Constrained decoding hook: one constraint state per stream.

The engine knows nothing about grammars. It asks a `TokenConstraint` to mask
a stream's logits before sampling and tells it which token was chosen. The
JSON-schema grammar used for tool calls and structured output lives in
`pbd_integrations` (built on llguidance) and implements this protocol. Each
branch gets its own instance, so constraints compose with parallel decoding.

The engine also tells the constraint how many tokens the stream may still
sample (``budget``). A grammar constraint uses it to finish its value in time:
when the budget comes down to the fewest tokens that complete the value, it
allows only the next token of that completion, so an answer cut by the budget
is still complete (valid JSON for a JSON grammar). Such an answer still ends
with ``finish_reason="length"``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenConstraint(Protocol):
    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """Return ``logits`` (shape ``[vocab]``) with forbidden tokens set to ``-inf``. May modify in place.

        Args:
            logits: The stream's next-token logits.
            budget: How many more tokens this stream may sample, *including* the one being
                sampled now (1: this is the last token). For a branch, the smaller of its own
                budget and the answer's. ``None``: unknown or unlimited. A constraint may
                narrow the allowed tokens as the budget runs out so that the constrained
                text is complete when it does.
        """
        ...

    def advance(self, token_id: int) -> None:
        """Record that ``token_id`` was sampled for this stream."""
        ...

    def is_finished(self) -> bool:
        """True once the constrained text is complete: the stream then ends with ``finish_reason="stop"``.

        A constraint may also have a ``cut_by_budget`` attribute: when it is true (the budget forced
        the completion), the stream ends with ``finish_reason="length"`` instead.
        """
        ...


def min_tokens_to_finish(constraint: object) -> int:
    """Fewest tokens that complete ``constraint``'s text from its current state (0 when unknown).

    Constraints may define the optional method ``min_tokens_to_finish(self) -> int``;
    the engine calls it on a fresh constraint and raises `ValueError` before decoding
    when ``max_new_tokens`` is smaller (the answer could not be completed). Constraints
    without the method count as 0.
    """
    method = getattr(constraint, "min_tokens_to_finish", None)
    return int(method()) if callable(method) else 0
