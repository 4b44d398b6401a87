"""Micro-benchmark: the cost of one forward pass that feeds k new tokens.

The parallel stage feeds one token per live branch per forward pass, so its
speed limit is set by how the cost of a step grows with k. On a fixed cache
of ``cache_tokens`` tokens we time a step of k new tokens (custom additive
float 4D mask ``[1, 1, k, cache + k]``, explicit ``position_ids``, logits for
all k positions, as the parallel stage needs) and roll the cache back with
``DynamicCache.crop(-k)`` between repetitions. The ceiling of the parallel
stage at k branches is ``k * cost(1) / cost(k)``: k tokens for the price of
one step, against k sequential steps (DESIGN.md section 2).

Each new token sees the whole cache and itself only, as k branches of one
token each would; the cost of a step does not depend on which slots are masked.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from transformers import DynamicCache

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def _branch_step_mask(cache_tokens: int, k: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask ``[1, 1, k, cache + k]``: every new token sees the cache and itself."""
    allowed = torch.zeros((k, cache_tokens + k), dtype=torch.bool, device=device)
    allowed[:, :cache_tokens] = True
    allowed[:, cache_tokens:] = torch.eye(k, dtype=torch.bool, device=device)
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
    return mask.masked_fill(allowed, 0.0)[None, None]


@torch.no_grad()
def measure_step_cost(
    model,
    *,
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    cache_tokens: int = 200,
    repeats: int = 15,
    warmup: int = 3,
    seed: int = 0,
    progress=None,
) -> dict[str, Any]:
    """Median milliseconds of one k-token step for each k, with the ceiling ``k * cost(1) / cost(k)``.

    ``progress`` is an optional callable called once per k when all are measured (a tqdm ``update``).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (1, cache_tokens), generator=gen).to(device)
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)

    # Rounds over every k, so that a drift of the machine (frequency, neighbours) hits every k alike
    # instead of whichever k happened to be measured while it lasted.
    inputs = {k: (torch.randint(0, vocab, (1, k), generator=gen).to(device),
                  _branch_step_mask(cache_tokens, k, dtype, device),
                  torch.full((1, k), cache_tokens, dtype=torch.long, device=device)) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(warmup + repeats):
        for k in ks:
            new, mask, positions = inputs[k]
            t0 = time.perf_counter()
            model(input_ids=new, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            elapsed = time.perf_counter() - t0
            cache.crop(-k)
            if r >= warmup:
                times[k].append(elapsed * 1000)
    assert cache.get_seq_length() == cache_tokens
    rows = []
    for k in ks:
        measured = sorted(times[k])
        rows.append({
            "k": k,
            "median_ms": round(statistics.median(measured), 3),
            "p10_ms": round(measured[len(measured) // 10], 3),
            "p90_ms": round(measured[(len(measured) * 9) // 10 - 1 if len(measured) >= 10 else -1], 3),
        })
        if progress is not None:
            progress()
    base = rows[0]["median_ms"] if rows and rows[0]["k"] == 1 else None
    for row in rows:
        row["ceiling"] = round(row["k"] * base / row["median_ms"], 3) if base else None
    return {
        "cache_tokens": cache_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "rows": rows,
    }


def cost_at(step_cost: dict[str, Any], k: float) -> float:
    """Step cost in ms at (possibly fractional) k, linearly interpolated between measured ks."""
    rows = step_cost["rows"]
    ks = [r["k"] for r in rows]
    ms = [r["median_ms"] for r in rows]
    if k <= ks[0]:
        return ms[0]
    for (k0, m0), (k1, m1) in zip(zip(ks, ms), zip(ks[1:], ms[1:])):
        if k <= k1:
            return m0 + (m1 - m0) * (k - k0) / (k1 - k0)
    return ms[-1] * k / ks[-1]


def ceiling_at(step_cost: dict[str, Any], k: float) -> float:
    """The parallel stage's speed-up ceiling ``k * cost(1) / cost(k)`` at k."""
    return k * cost_at(step_cost, 1) / cost_at(step_cost, k)
