"""Chat-template stand-ins for the engine, no weights: what `pbd serve` and the adapters need of a decoder.

`lc_fakes.FakeDecoder` replays scripted events; the adapters and the server also render chat
messages and count prompt tokens, so here it gets a ChatML tokenizer that knows token ids.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "integrations" / "langchain"))  # lc_fakes
from lc_fakes import ChatMLTokenizer, FakeDecoder  # noqa: E402


class CharTokenizer(ChatMLTokenizer):
    """The fake's ChatML template plus one token per character (`pbd serve` counts prompt tokens)."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 256 for c in text]}

    def decode(self, ids: list[int], **_) -> str:
        return "".join(chr(i) for i in ids)

    def __len__(self) -> int:
        return 256


@dataclass(eq=False)
class ChatDecoder(FakeDecoder):
    """`FakeDecoder` with a `CharTokenizer` and a context window, as the server and adapters expect of a decoder."""

    context_window: int = 4096

    def __post_init__(self) -> None:
        self.tokenizer = CharTokenizer()

    def count_tokens(self, text: str) -> int:
        """One token a character, as `CharTokenizer` encodes (the real decoder's `count_tokens`)."""
        return len(text)
