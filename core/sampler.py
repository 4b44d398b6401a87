"""Logits in, one token per row out.

Built like mlx-lm's `make_sampler`: small pure transforms composed into a
closure. The sampler never sees the model, so it is tested on hand-made logits.
"""

from __future__ import annotations

from typing import Callable

import torch

Sampler = Callable[[torch.Tensor], torch.Tensor]


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row. logits: [n, vocab]."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [n, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``p`` (always at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the mass *before* it already reaches p.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def make_sampler(
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Sampler:
    """Return ``sample(logits [n, vocab]) -> tokens [n]``; temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return lambda logits: logits.argmax(dim=-1)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        scaled = logits.float() / temperature
        scaled = apply_top_p(apply_top_k(scaled, top_k), top_p)
        probs = scaled.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

    return sample
