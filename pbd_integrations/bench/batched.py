"""The batched baseline: Skeleton-of-Thought-style expansion in one padded batch.

Each branch becomes its own sequence holding a full copy of its context
(shared prefix + title), left-padded to a common length; one batched greedy
decode then expands every branch at once. This is how Skeleton-of-Thought and
batched serving expand independent points: ``k`` copies of the prefix in the
KV cache and no merge stage.

Written with plain transformers (no engine code), so that the exactness
check between this baseline and the engine means something::

    pad pad P P P P t1 | g g g      row 1: prefix copy + title 1, then its tokens
    pad P P P P t2 t2  | g g g g    row 2: prefix copy + title 2
    ^ masked out by the 2D attention mask; positions count real tokens only

Finished rows are dropped from the batch at once (``DynamicCache.batch_select_indices``),
the strongest form of this baseline (``model.generate`` keeps decoding padding
for finished rows until the longest ends).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class BatchedResult:
    texts: list[str]
    """Each branch body, end marker and stop strings excluded (as `BranchResult.text`)."""
    token_ids: list[list[int]]
    """Generated tokens per branch, including the token that ended it (as `BranchResult.token_ids`)."""
    finish_reasons: list[str]
    seconds: float
    prefill_seconds: float
    forward_passes: int
    generated_tokens: int
    peak_kv_tokens: int
    """Cache slots held at the peak: rows x padded length (padding slots cost memory too)."""
    prompt_tokens: int
    """Context tokens fed to the model, summed over rows (each row pays for its own prefix copy)."""
    stats: dict = field(default_factory=dict)


def _cut(text: str, markers: list[str]) -> tuple[str, bool]:
    """Text before the first marker, and whether one was found."""
    cut = min((i for i in (text.find(m) for m in markers) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def batched_expand(
    model,
    tokenizer,
    contexts: list[list[int]],
    *,
    max_new_tokens: int,
    end_markers: tuple[str, ...] = ("####",),
    stop: list[str] | None = None,
    eos_token_ids: list[int] | None = None,
) -> BatchedResult:
    """Greedy-decode every context as its own row of one left-padded batch.

    A row ends at an end marker or stop string in its text, at an EOS token,
    or after ``max_new_tokens`` tokens, matching how the engine ends a branch.
    """
    device = next(model.parameters()).device
    if eos_token_ids is None:
        eos = tokenizer.eos_token_id
        eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
    eos_set = set(eos_token_ids)
    markers = list(end_markers) + list(stop or [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_token_ids or [0])[0]

    start = time.perf_counter()
    rows = len(contexts)
    width = max(len(c) for c in contexts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, ctx in enumerate(contexts):
        ids[r, width - len(ctx):] = torch.tensor(ctx)
        mask[r, width - len(ctx):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [rows, width]: real tokens count from 0

    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    prefill_seconds = time.perf_counter() - start
    forward_passes = 1
    peak_kv = rows * width

    live = list(range(rows))  # original row index of each batch row
    generated: list[list[int]] = [[] for _ in range(rows)]
    texts = [""] * rows
    reasons = ["length"] * rows
    next_pos = positions[:, -1:] + 1  # [live, 1]
    logits = out.logits[:, -1, :]  # [live, vocab]
    while True:
        tokens = logits.argmax(-1)  # [live]
        keep = []
        for b, row in enumerate(live):
            tok = int(tokens[b])
            generated[row].append(tok)
            if tok in eos_set:
                reasons[row] = "eos"
                texts[row] = _cut(tokenizer.decode(generated[row][:-1]), markers)[0]
                continue
            texts[row], marked = _cut(tokenizer.decode(generated[row]), markers)
            if marked:
                reasons[row] = "end_marker"
            elif len(generated[row]) < max_new_tokens:
                keep.append(b)
        if not keep:
            break
        if len(keep) < len(live):
            # a finished row leaves the batch and the cache at once
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
            live = [live[b] for b in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                    past_key_values=cache, use_cache=True)
        forward_passes += 1
        peak_kv = max(peak_kv, mask.shape[0] * mask.shape[1])
        next_pos = next_pos + 1
        logits = out.logits[:, -1, :]
    seconds = time.perf_counter() - start
    return BatchedResult(
        texts=texts,
        token_ids=generated,
        finish_reasons=reasons,
        seconds=seconds,
        prefill_seconds=prefill_seconds,
        forward_passes=forward_passes,
        generated_tokens=sum(len(g) for g in generated),
        peak_kv_tokens=peak_kv,
        prompt_tokens=sum(len(c) for c in contexts),
    )
