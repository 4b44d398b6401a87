"""From what a caller passes to the token ids the model is conditioned on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class RawPrompt:
    """Text that is already rendered (chat template applied): it is tokenized verbatim.

    Adapters that render tools through the chat template themselves pass this.
    """

    text: str


@dataclass(frozen=True)
class TokenIds:
    """A prompt given as token ids, decoded exactly as given (a server's client sends these).

    Text re-encoded from ids can differ from them (a model's own samples need not be the
    tokenizer's canonical encoding), so a server that must continue exactly what it was sent
    passes the ids through.
    """

    ids: tuple[int, ...]

    def __init__(self, ids: Sequence[int]) -> None:
        object.__setattr__(self, "ids", tuple(int(i) for i in ids))


Prompt = Union[str, Sequence[Mapping[str, Any]], RawPrompt, TokenIds]


def render_messages(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Apply the tokenizer's chat template; without one, fall back to ``role: content`` lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
    if add_generation_prompt:
        lines.append("assistant:")
    return "\n".join(lines) + ("" if add_generation_prompt else "\n")


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """Validate ``prompt`` and return the exact text to tokenize."""
    if isinstance(prompt, RawPrompt):
        if not isinstance(prompt.text, str) or not prompt.text:
            raise ValueError("RawPrompt text must be a non-empty string")
        return prompt.text
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt must not be empty")
        if not getattr(tokenizer, "chat_template", None):
            return prompt  # a base model: the string is the text to continue
        return render_messages(tokenizer, [{"role": "user", "content": prompt}])
    if isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if len(prompt) == 0:
            raise ValueError("prompt must not be an empty list of messages")
        for message in prompt:
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(f"each chat message must be a mapping with 'role' and 'content', got {message!r}")
        if not any(isinstance(m["content"], str) and m["content"].strip() for m in prompt):
            raise ValueError("prompt messages must not all be empty")
        return render_messages(tokenizer, prompt)
    raise ValueError(f"prompt must be a str, a list of chat messages or a RawPrompt, got {type(prompt).__name__}")


def encode(tokenizer, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Tokenize; by default without special tokens (a chat template already wrote them)."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of the prompt. Text not rendered by a chat template gets the tokenizer's BOS."""
    if isinstance(prompt, TokenIds):
        try:
            vocab = len(tokenizer)
        except TypeError:  # a tokenizer behind a server's endpoints: the server checks
            vocab = None
        bad = [i for i in prompt.ids if i < 0 or (vocab is not None and i >= vocab)]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab})")
        return list(prompt.ids)
    text = prompt_text(tokenizer, prompt)
    templated = not isinstance(prompt, RawPrompt) and bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, RawPrompt):
        templated = True  # rendered by the caller: use it verbatim
    return encode(tokenizer, text, add_special_tokens=not templated)
