"""Branches that say something (``DecodeOptions.nonempty_branches``).

A branch decoded alone sees the prompt and its own ``####<title>:`` and
nothing of what a finished step looks like. A small model often answers a
lone title by ending it at once: SmolLM2-135M left 215 of 532 parallel steps
of the quality suite empty (`benchmarks/quality`), writing ``\\n####`` right
after the colon, and plain decoding of the same titled steps left 178 empty.

`NonEmptyBranch` is a per-stream `TokenConstraint` that, while the branch's
text is still blank, masks every token that would end it or start a new line:
special tokens (EOS, end of turn), tokens that start with ``#`` (the end
marker ``####``) and blank tokens with a line break. Spaces stay allowed (a
character-level tokenizer writes `` The`` as two tokens). So a step starts on
its title's line, as in the format's own example (``####Apple: An apple is a
fruit.``); the first non-blank character ends the mask, and from then on the
branch ends where the model ends it.

Measured on the quality suite (first 40 tasks, SmolLM2-135M, greedy,
caller-given titles; `benchmarks/quality/run.py --set nonempty_branches=...`),
per-step accuracy written one after another / in parallel:

- off: 19.2% / 15.1% (56 and 60 of 172 steps empty);
- masking only the ending tokens (a line break first allowed): 28.5% / 19.8%;
- masking ending tokens and blank line breaks (this): **36.0% / 29.1%**.

Qwen2.5-Coder-0.5B never leaves a step empty and starts on the title's line:
its answers were token-identical with the mask on and off (20 tasks).

It needs logits in this process (`LocalExecutor`: transformers or llama.cpp);
on a server the option has no effect.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .detokenize import token_texts


class NonEmptyBranch:
    """Masks the tokens that would end a branch or break its line until it has written a non-space character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.started = False
        self.masked = 0  # tokens sampled under the mask (diagnostics and tests)

    def mask_logits(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        if not self.started:
            banned = _ending_tokens(self.tokenizer)
            logits[..., banned[banned < logits.shape[-1]].to(logits.device)] = float("-inf")
            self.masked += 1
        return logits

    def advance(self, token_id: int) -> None:
        if not self.started:
            text = self.tokenizer.decode([token_id], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            self.started = bool(text.strip())

    def is_finished(self) -> bool:
        return False


@functools.lru_cache(maxsize=8)
def _ending_tokens(tokenizer: Any) -> torch.Tensor:
    """Ids of tokens a blank branch may not take: special, ``#`` after spaces, or a blank line break (found once)."""
    texts = token_texts(tokenizer)
    return torch.tensor([i for i, t in enumerate(texts) if _ends_or_breaks(t)], dtype=torch.long)


def _ends_or_breaks(text: str) -> bool:
    if text == "" or text.lstrip().startswith("#"):  # a special token (decodes to nothing), or the end marker
        return True
    return not text.strip() and ("\n" in text or "\r" in text)
