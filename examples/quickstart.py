"""Decode one question both ways on the default model and print the speed-up.

    python examples/quickstart.py

The question has eight independent parts. Plain decoding writes them one
after another; parallel-branch decoding writes one token of every part per
forward pass, in one sequence and one KV cache, then writes the conclusion
with all parts in view. Timings are wall-clock on this machine (CPU unless a
GPU is present).
"""

from __future__ import annotations

import time

from pbd_core import ParallelBranchDecoder

QUESTION = "Write one short sentence about each planet of the solar system."
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
SYSTEM = (
    "You are a helpful assistant. When a task has independent parts, write each part as a step: "
    "'####', the step's title, a colon ':', then the step. After all steps write '####%%%%' and a one-line conclusion."
)


def main() -> None:
    started = time.perf_counter()
    decoder = ParallelBranchDecoder.from_pretrained()  # SmolLM2-135M-Instruct, offline, bf16 where the CPU has it
    print(f"loaded {decoder.model_name} on {decoder.device} ({decoder.mask_dtype}) in {time.perf_counter() - started:.1f}s\n")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    options = dict(branches=PLANETS, max_branch_tokens=40, max_new_tokens=400)

    decoder.generate(messages, **{**options, "max_new_tokens": 16})  # warm-up: first-call costs out of the timings
    timings = {}
    for name, parallel in (("sequential", False), ("parallel", True)):
        started = time.perf_counter()
        result = decoder.generate(messages, parallel=parallel, **options)
        timings[name] = (time.perf_counter() - started, result)

    seq_seconds, seq = timings["sequential"]
    par_seconds, par = timings["parallel"]
    print("=== parallel-branch decoding ===")
    print(par.text)
    print()
    print(f"{'':>12} {'seconds':>8} {'tokens':>7} {'passes':>7} {'tokens/pass':>12} {'branch stage tok/s':>19}")
    for name, (seconds, result) in timings.items():
        stats = result.stats
        stage_rate = stats.stage_tokens["parallel"] / max(stats.stage_seconds["parallel"], 1e-9)
        print(
            f"{name:>12} {seconds:8.2f} {stats.generated_tokens:7d} {stats.forward_passes:7d} "
            f"{stats.tokens_per_forward_pass:12.2f} {stage_rate:19.1f}"
        )
    seq_rate = seq.stats.stage_tokens["parallel"] / seq.stats.stage_seconds["parallel"]
    par_rate = par.stats.stage_tokens["parallel"] / par.stats.stage_seconds["parallel"]
    print(f"\nspeed-up of the branch stage: {par_rate / seq_rate:.1f}x tokens/s; whole answer: {seq_seconds / par_seconds:.1f}x faster")
    print("(the two answers differ in content: sequentially each step sees the steps before it, in parallel it does not)")


if __name__ == "__main__":
    main()
