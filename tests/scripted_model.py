"""A fake causal LM whose next token is a function of the text it can *see*.

`ScriptedLM` stores (token id, position) pairs in the transformers cache it is
given, applies the attention mask the engine passes, decodes the visible
tokens in position order and asks a script what comes next. It lets tests
state behaviour in words ("after `####Apples:` write ` red.`") and it checks
the mask for real: a branch that could see a sibling would see different text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from transformers import GenerationConfig, PretrainedConfig

from tiny_models import byte_tokenizer

from pbd_core import ParallelBranchDecoder

Script = Callable[[str], "str | Sequence[str] | None"]
"""Visible text in, what to write next out: a string (its first character is the next token), a
sequence of strings (their first characters in order of preference: the first gets logit 0, the
next -1, ...; so a constraint that forbids the first choice gets the second), or None for EOS."""


def rules(*pairs: tuple[str, str], leak_guard: Sequence[str] = ()) -> Script:
    """A script from (after, write) rules.

    When the visible text ends with ``after`` followed by a proper prefix of
    ``write``, the model writes the next character of ``write``. With no rule
    in progress it emits EOS. ``leak_guard`` titles must never be seen together
    by a branch: when a branch titled with one of them can see another's
    ``####title:`` (before the ``####%%%%`` that closes the block), the model
    writes ``LEAK``.
    """

    def script(text: str) -> str | None:
        if leak_guard and "%%%%" not in text:
            last = text.rsplit("####", 1)[-1]
            own = next((t for t in leak_guard if last.startswith(t + ":")), None)
            if own is not None and any(f"####{t}:" in text for t in leak_guard if t != own):
                return "LEAK"
        best: tuple[int, str] | None = None
        for after, write in pairs:
            for i in range(len(write) - 1, -1, -1):
                if text.endswith(after + write[:i]):
                    if best is None or len(after) + i > best[0]:
                        best = (len(after) + i, write[i])
                    break
        return best[1] if best else None

    return script


def ranked(*scripts: Script) -> Script:
    """A script whose choices are those of ``scripts``, in that order of preference.

    Lets a test say "the model would rather write A, but B next": when the engine masks the first
    choice (a numbered title, an empty branch, a one-title plan), the model takes the next.
    """

    def script(text: str) -> list[str]:
        return [c for c in (s(text) for s in scripts) if c]

    return script


FRUIT = ["Apples", "Bananas", "Cherries"]
"""The titles of the fruit answer; as a ``leak_guard`` they make a branch that sees a sibling write ``LEAK``."""
FRUIT_BODIES = [
    ("####Apples:", " red.\n####"),
    ("####Bananas:", " long and yellow.\n####"),
    ("####Cherries:", " small.\n####"),
]
"""Rules for what each fruit branch writes after its title: bodies of different lengths, so branches end apart."""
PLAN = [
    ("Q\n", "Intro.\n####Apples:"),
    ("Apples: ...\n####", "Bananas:"),
    ("Bananas: ...\n####", "Cherries:"),
    ("Cherries: ...\n####", "%%%%"),
]
"""Rules for a model that plans the fruit answer itself after the prompt ``"Q\\n"``: an intro, then the titles."""


def scripted_decoder(script: Script, **model_options) -> ParallelBranchDecoder:
    """The real engine over a `ScriptedLM` of ``script`` (``model_options``: e.g. ``max_positions``).

    Everything but the model is the production code path, so a test states the model's behaviour
    in words and checks what the engine makes of it.
    """
    model = ScriptedLM(script, **model_options)
    return ParallelBranchDecoder(model, model.tokenizer)


def decoder_for(*pairs: tuple[str, str], leak_guard: Sequence[str] = ()) -> ParallelBranchDecoder:
    """`scripted_decoder` of ``rules(*pairs, leak_guard=leak_guard)``: the usual (after, write) set-up.

    No ``leak_guard`` by default; pass ``FRUIT`` where the fruit branches must not see each other
    (a module whose tests all want it binds it once with `functools.partial`).
    """
    return scripted_decoder(rules(*pairs, leak_guard=leak_guard))


class ScriptedLM(torch.nn.Module):
    def __init__(self, script: Script, tokenizer=None, max_positions: int = 4096) -> None:
        super().__init__()
        self.tokenizer = tokenizer or byte_tokenizer()
        self.script = script
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = PretrainedConfig(max_position_embeddings=max_positions, eos_token_id=self.tokenizer.eos_token_id)
        self.config._attn_implementation = "sdpa"
        self.generation_config = GenerationConfig(eos_token_id=self.tokenizer.eos_token_id)
        self.vocab_size = len(self.tokenizer)
        self.calls: list[int] = []  # number of query tokens of each forward pass
        self.complete_characters = True
        """Finish a character that takes several tokens before asking the script again (False: the script
        sees the half character as U+FFFD, as a real model's text would show it)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0, **kwargs):
        ids, positions = input_ids[0], position_ids[0]
        self.calls.append(int(ids.numel()))
        entry = torch.stack([ids, positions], dim=-1).float()[None, None]  # [1, 1, q, 2]
        stored, _ = past_key_values.update(entry, entry, 0)  # [1, 1, L, 2]
        stored = stored[0, 0].long()
        if attention_mask is None:  # a plain causal sequence: each query sees every slot up to its own
            total, q = stored.shape[0], ids.numel()
            visible = torch.arange(total)[None, :] <= torch.arange(total - q, total)[:, None]
        else:
            mask = attention_mask["full_attention"] if isinstance(attention_mask, dict) else attention_mask
            visible = mask[0, 0] == 0  # [q, L]
        rows = list(range(ids.numel()))
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            rows = rows[-logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            rows = logits_to_keep.tolist()
        logits = torch.full((1, len(rows), self.vocab_size), -1e4)
        for out_row, row in enumerate(rows):
            seen = stored[visible[row]]
            order = torch.argsort(seen[:, 1], stable=True)
            ids = seen[order, 0].tolist()
            text = self.tokenizer.decode(ids)
            partial = 0  # bytes already written of a character that takes several tokens (``：`` is 3 bytes)
            while self.complete_characters and text.endswith("\ufffd") and partial < min(3, len(ids)):
                partial += 1
                text = self.tokenizer.decode(ids[:-partial])
            nxt = self.script(text)
            choices = [nxt] if isinstance(nxt, str) and nxt else [c for c in nxt or () if c]
            if not choices:
                logits[0, out_row, self.tokenizer.eos_token_id] = 0.0
            for rank, choice in reversed(list(enumerate(choices))):  # the first choice wins a tie
                pieces = self.tokenizer(choice[0])["input_ids"]  # the next byte of that character
                logits[0, out_row, pieces[min(partial, len(pieces) - 1)]] = -float(rank)
        return SimpleNamespace(logits=logits)
