"""Parallel-stage throughput against plain decoding and against the step-cost ceiling.

    python benchmarks/parallel_stage.py [--model default] [--ks 1 2 4 8 16] [--branch-tokens 32]

For each k, the same question with k caller-given branches is decoded
(greedy) twice in this process: sequentially (``parallel=False``: the same
titled steps, one after another) and with parallel-branch decoding. It prints
the branch stage's tokens per second both ways, their ratio, and the ceiling
measured in the same run: one decode step with k new tokens costs cost(k), so
k branches can go at most ``k * cost(1) / cost(k)`` times faster. Because
branches end at different lengths, the ceiling of a run is computed from the
live-branch count of each of its steps: ``tokens * cost(1) / sum(cost(live))``.
All numbers are wall-clock on this machine (CPU unless a GPU is present).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from pbd_core import ParallelBranchDecoder
from pbd_integrations.bench.step_cost import cost_at, measure_step_cost

TOPICS = [
    "rivers", "mountains", "deserts", "forests", "oceans", "volcanoes", "glaciers", "islands",
    "caves", "lakes", "canyons", "reefs", "swamps", "plains", "waterfalls", "tundra",
]
SYSTEM = (
    "Write each requested part as a step: '####', the title, ':', then a long and detailed paragraph. "
    "After all steps write '####%%%%' and a one-line conclusion."
)


def run_ceiling(lengths: list[int], step_cost: dict) -> float:
    """Best possible speed-up of a stage whose branches sampled ``lengths`` tokens."""
    steps = [sum(n > i for n in lengths) for i in range(max(lengths))]
    return sum(lengths) * cost_at(step_cost, 1) / sum(cost_at(step_cost, live) for live in steps)


def stage_rate(result) -> float:
    return result.stats.stage_tokens["parallel"] / result.stats.stage_seconds["parallel"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--branch-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    decoder = ParallelBranchDecoder.from_pretrained(args.model, dtype=args.dtype)
    print(f"{decoder.model_name}, {decoder.device}, {decoder.mask_dtype}, {torch.get_num_threads()} threads", flush=True)
    step_cost = measure_step_cost(decoder.model, ks=sorted(set([1, *args.ks])), cache_tokens=200)
    rows = []
    for k in args.ks:
        titles = [f"About {topic}" for topic in TOPICS[:k]]
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Describe " + ", ".join(TOPICS[:k]) + "."},
        ]
        options = dict(branches=titles, max_branch_tokens=args.branch_tokens, max_new_tokens=args.branch_tokens * k + 1)
        decoder.generate(messages, **{**options, "max_branch_tokens": 2})  # warm-up
        sequential = decoder.generate(messages, parallel=False, **options)
        parallel = decoder.generate(messages, **options)
        lengths = [len(b.token_ids) for b in parallel.branches]
        ceiling = run_ceiling(lengths, step_cost)
        speedup = stage_rate(parallel) / stage_rate(sequential)
        rows.append(
            {
                "k": k,
                "branch_tokens": sum(lengths),
                "parallel_passes": parallel.stats.stage_forward_passes["parallel"],
                "plain_tok_s": round(stage_rate(sequential), 2),
                "parallel_tok_s": round(stage_rate(parallel), 2),
                "speedup": round(speedup, 3),
                "ceiling_k": round(k * cost_at(step_cost, 1) / cost_at(step_cost, k), 3),
                "ceiling_run": round(ceiling, 3),
                "of_ceiling": round(speedup / ceiling, 3),
            }
        )
        r = rows[-1]
        print(
            f"k={k:>2}  plain {r['plain_tok_s']:7.1f} tok/s  parallel {r['parallel_tok_s']:7.1f} tok/s  "
            f"speed-up {r['speedup']:5.2f}x  ceiling {r['ceiling_run']:5.2f}x (k-only {r['ceiling_k']:5.2f}x)  "
            f"= {100 * r['of_ceiling']:5.1f}% of ceiling",
            flush=True,
        )
    print("\nstep cost (median ms, cache of 200 tokens): "
          + ", ".join(f"k={row['k']}: {row['median_ms']:.1f}" for row in step_cost["rows"]))
    print("reproduce: python benchmarks/parallel_stage.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "model": decoder.model_name,
        "dtype": str(decoder.mask_dtype),
        "step_cost": step_cost,
        "rows": rows,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
