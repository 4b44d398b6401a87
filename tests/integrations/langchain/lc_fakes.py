"""A scripted stand-in for `pbd_core.ParallelBranchDecoder`: events without a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pbd_core import (
    BranchEndEvent,
    BranchResult,
    BranchStartEvent,
    DecodeOptions,
    DecodeResult,
    DecodeStats,
    FinalEvent,
    TokenEvent,
)


class ChatMLTokenizer:
    """Enough of a tokenizer for the adapter: a ChatML chat template that ignores tools."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@dataclass(eq=False)
class FakeDecoder:
    """Replays a scripted answer as engine events: ``before``, then branches, then ``after``.

    Branch tokens are interleaved one word per branch per step, as the engine
    emits them. Every call's prompt and options are recorded.
    """

    before: list[str] = field(default_factory=lambda: ["Hello", " world"])
    branches: dict[str, list[str]] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    model_name: str = "fake-model"
    source: str = "fake"
    calls: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    tokenizer: Any = field(default_factory=ChatMLTokenizer)

    def render_messages(self, messages, *, tools=None, add_generation_prompt=True) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt)

    def stream(self, prompt, **options):
        DecodeOptions.from_kwargs(**options)  # the engine's own validation
        self.calls.append((prompt, options))
        text = ""
        for piece in self.before:
            text += piece
            yield TokenEvent(piece, None, "plan", 1)
        results: dict[int, BranchResult] = {}
        titles = list(self.branches)
        for index, title in enumerate(titles):
            yield BranchStartEvent(index, title)
            yield TokenEvent(f"####{title}:", index, "parallel", None)
        longest = max((len(words) for words in self.branches.values()), default=0)
        for step in range(longest + 1):
            for index, title in enumerate(titles):
                words = self.branches[title]
                if step < len(words):
                    yield TokenEvent(words[step], index, "parallel", 2)
                elif step == len(words):
                    body = "".join(words)
                    results[index] = BranchResult(title, body, [2] * len(words), [], "end_marker")
                    yield BranchEndEvent(index, "end_marker", body)
        if titles:
            text += "".join(f"####{t}:{''.join(w)}" for t, w in self.branches.items()) + "####%%%%"
            yield TokenEvent("####%%%%", None, "merge", None)
        for piece in self.after:
            text += piece
            yield TokenEvent(piece, None, "merge", 3)
        generated = len(self.before) + len(self.after) + sum(len(w) for w in self.branches.values())
        stats = DecodeStats(prompt_tokens=7, generated_tokens=generated, forward_passes=max(generated - 1, 1))
        yield FinalEvent(DecodeResult(text, [results[i] for i in sorted(results)], stats, "eos", parallel=bool(titles)))
