"""Tiny random-weight models and a byte-level tokenizer, built locally in milliseconds.

They exercise the mask and position logic across architectures without
downloading anything; the weights are random, so what they write is noise,
but noise that must be reproduced token for token.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3TextConfig,
    Gemma3ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIALS = ["<|eos|>", "<|pad|>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (ids 0-255), plus EOS (256) and PAD (257). No chat template."""
    # ByteLevel maps each byte to a printable character; give those 256 symbols a stable order.
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in SPECIALS:
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|eos|>", pad_token="<|pad|>")


VOCAB = 258
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=256,
    pad_token_id=257,
    bos_token_id=None,
    tie_word_embeddings=False,  # tied random embeddings make Gemma 3 repeat one byte forever
)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random fp32 model of the given architecture ("llama", "qwen2" or "gemma3")."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(**COMMON, initializer_range=0.2)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(**COMMON, initializer_range=0.2)
        model = Qwen2ForCausalLM(config)
    elif arch == "gemma3":
        # A sliding window of 8 positions on every other layer: far shorter than the
        # sequences in the tests, so the per-layer-type masks really matter.
        config = Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            initializer_range=0.2,
        )
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(arch)
    model.config._attn_implementation = "sdpa"
    return model.float().eval()


def reference_tokens(model, context_ids: list[int], n: int, eos_id: int, tokenizer=None) -> list[int]:
    """Plain greedy decoding (transformers' ``generate``) of ``context_ids`` alone, ``n`` tokens.

    With ``tokenizer``, under the branch-start mask the engine applies to every branch by default
    (``nonempty_branches``, `pbd_core.branch_start`), so a branch can be compared with decoding its
    own context alone under the same rule.
    """
    from transformers import LogitsProcessor, LogitsProcessorList

    processors = LogitsProcessorList()
    if tokenizer is not None:
        from pbd_core.branch_start import NonEmptyBranch

        class BranchStart(LogitsProcessor):
            def __init__(self) -> None:
                self.mask, self.fed = NonEmptyBranch(tokenizer), 0

            def __call__(self, input_ids, scores):
                generated = input_ids[0, len(context_ids) :].tolist()
                for token in generated[self.fed :]:
                    self.mask.advance(token)
                self.fed = len(generated)
                scores[0] = self.mask.mask_logits(scores[0])
                return scores

        processors.append(BranchStart())
    out = model.generate(
        torch.tensor([context_ids]), max_new_tokens=n, do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id,
        logits_processor=processors,
    )
    return out[0, len(context_ids) :].tolist()
