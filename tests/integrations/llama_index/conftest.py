"""Fixtures: a scripted fake decoder (no model) and the real default model (loaded once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from pbd_core import (  # noqa: E402
    BranchEndEvent,
    BranchResult,
    BranchStartEvent,
    DecodeOptions,
    DecodeResult,
    DecodeStats,
    FinalEvent,
    RawPrompt,
    TokenEvent,
)


class FakeTokenizer:
    """Enough of a tokenizer for the adapter: a ChatML template without tool support."""

    chat_template = "chatml"
    vocab_size = 100

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@dataclass(eq=False)  # hashable by identity, like a real decoder (the runner keeps a lock per decoder)
class FakeDecoder:
    """Replays scripted answers as engine events, one word per token.

    ``answers`` is consumed in order (the last one repeats). An answer is a
    string, or a ``(prefix, [(title, body), ...], conclusion)`` tuple that is
    replayed as one parallel block with the branches interleaved. ``delay``
    sleeps per token, like a model's forward pass (it blocks the thread).
    """

    answers: list[Any] = field(default_factory=lambda: ["Hello there friend."])
    delay: float = 0.0
    model_name: str = "fake-model"
    source: str = "fake"
    context_window: int = 2048
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def render_messages(self, messages, *, tools=None, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, prompt, **options):
        DecodeOptions.from_kwargs(**options)
        assert isinstance(prompt, RawPrompt)
        self.calls.append({"prompt": prompt.text, **options})
        answer = self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]
        return self._events(prompt.text, answer)

    def generate(self, prompt, **options):
        *_, final = self.stream(prompt, **options)
        return final.result

    def _tick(self) -> None:
        if self.delay:
            time.sleep(self.delay)

    def _events(self, prompt: str, answer: Any):
        stats = DecodeStats(prompt_tokens=self.count_tokens(prompt))
        if isinstance(answer, str):
            words = _words(answer)
            for word in words:
                self._tick()
                yield TokenEvent(word, None, "merge", token_id=1)
            stats.generated_tokens = stats.forward_passes = len(words)
            yield FinalEvent(DecodeResult(answer, [], stats, "eos", token_ids=[1] * len(words), parallel=False))
            return
        prefix, branches, conclusion = answer
        text = prefix
        for word in _words(prefix):
            yield TokenEvent(word, None, "plan", token_id=1)
        for i, (title, _) in enumerate(branches):
            yield BranchStartEvent(i, title)
            yield TokenEvent(f"####{title}:", i, "parallel")
        bodies = [_words(body) for _, body in branches]
        for step in range(max(len(b) for b in bodies)):
            self._tick()
            for i, body in enumerate(bodies):
                if step < len(body):
                    yield TokenEvent(body[step], i, "parallel", token_id=2)
                if step == len(body) - 1:
                    yield BranchEndEvent(i, "end_marker", branches[i][1])
        yield TokenEvent("####%%%%", None, "merge")
        for word in _words(conclusion):
            yield TokenEvent(word, None, "merge", token_id=3)
        text += "".join(f"####{t}:{b}" for t, b in branches) + "####%%%%" + conclusion
        results = [
            BranchResult(t, b, [2] * len(_words(b)), [], "end_marker") for t, b in branches
        ]
        n = len(_words(text))
        stats.generated_tokens = stats.forward_passes = n
        yield FinalEvent(DecodeResult(text, results, stats, "eos", token_ids=[1] * n, parallel=True))


def _words(text: str) -> list[str]:
    """Split into word tokens that concatenate back to ``text``."""
    out: list[str] = []
    for piece in text.split(" "):
        out.append(piece if not out else " " + piece)
    return [w for w in out if w]


@pytest.fixture
def make_decoder() -> type[FakeDecoder]:
    """The `FakeDecoder` class: ``make_decoder(answers=[...], delay=...)``."""
    return FakeDecoder


@pytest.fixture(scope="session")
def llm():
    """The real default model (SmolLM2-135M), greedy, short answers; loaded once per session."""
    from pbd_integrations.llama_index import ParallelBranchLLM

    model = ParallelBranchLLM(max_tokens=32, max_branch_tokens=16)
    _ = model.decoder  # load now, so the first test does not carry the load time in its timeout
    return model
