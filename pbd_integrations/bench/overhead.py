"""Overhead on prompts with no parallel structure: the engine against plain ``model.generate``.

For each prompt the engine decodes greedily (``parallel=True``, so it watches
for a plan); then ``model.generate`` decodes the same prompt ids for exactly
as many new tokens. Runs alternate and repeat; medians are compared. A prompt
where the model did write a plan is reported but left out of the ratio.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

PLAIN_PROMPTS: tuple[str, ...] = (
    "Write one sentence about the sea.",
    "What is the capital of France? Answer in one sentence.",
    "Describe a cat in two sentences.",
)


def measure_overhead(decoder, *, prompts=PLAIN_PROMPTS, max_new_tokens: int = 48, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of ``decoder.generate`` and of ``model.generate`` per prompt, and their ratio."""
    from pbd_core.prompting import prompt_ids

    rows = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(decoder.tokenizer, prompt)], device=next(decoder.model.parameters()).device)
        engine_s, hf_s, plain_s = [], [], []
        result = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = decoder.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.0)
            engine_s.append(time.perf_counter() - t0)
            n = max(result.stats.generated_tokens, 1)
            t0 = time.perf_counter()
            decoder.generate(prompt, max_new_tokens=n, temperature=0.0, parallel=False)
            plain_s.append(time.perf_counter() - t0)
            with torch.inference_mode():
                t0 = time.perf_counter()
                decoder.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, pad_token_id=decoder.tokenizer.pad_token_id)
                hf_s.append(time.perf_counter() - t0)
        rows.append({
            "prompt": prompt,
            "generated_tokens": result.stats.generated_tokens,
            "planned": result.parallel,
            "engine_seconds": round(statistics.median(engine_s), 4),
            "engine_sequential_seconds": round(statistics.median(plain_s), 4),
            "hf_generate_seconds": round(statistics.median(hf_s), 4),
        })
    clean = [r for r in rows if not r["planned"]]
    engine = sum(r["engine_seconds"] for r in clean)
    hf = sum(r["hf_generate_seconds"] for r in clean)
    return {
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "rows": rows,
        "overhead": round(engine / hf - 1, 4) if hf else None,
        "sequential_overhead": round(sum(r["engine_sequential_seconds"] for r in clean) / hf - 1, 4) if hf else None,
    }
