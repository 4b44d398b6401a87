"""Parallel tool calls: N independent calls decoded as branches against the same calls written one by one.

    python benchmarks/parallel_tool_calls.py [--model qwen2.5-coder-0.5b] [--calls 1 2 4 8] [--repeats 1]

For each N, the question asks for the weather in N cities, with one tool
(``get_weather(city)``) bound and a call required, rendered as the adapters render
it (Qwen2.5's chat template with the tool), greedy:

- **parallel** (what `ChatParallelBranch` and `ParallelBranchLLM` do for a required
  call): the model lists the calls (``[get_weather(city="Paris"), ...]``), then every
  call's arguments decode as a branch, one token of every call per forward pass
  (`pbd_core.tool_plan`);
- **sequential**: the same N calls written one after another in the model's own
  format (``parallel=False``, under the tool-call grammar with exactly N calls, so
  both write the same calls): the baseline;
- **native** (not timed): ``parallel=False`` with the grammar allowing 1 to 16 calls,
  i.e. how many calls the model makes by itself when it writes them one by one.

It prints, per N, the wall time of both (minimum and median of ``--repeats``,
interleaved; other work on the machine only ever adds time), the forward passes
and tokens, whether both made the same calls and whether those are the N
asked-for cities in order, then the CPU flags, the load average and the command
(``--json`` for a machine-readable copy). N = 1 shows the cost of the list for a
single call, which is then decoded exactly as without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when imported from elsewhere

CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo",
          "Lima", "Delhi", "Sydney", "Toronto", "Dublin", "Vienna", "Prague", "Seoul"]


def question(n: int) -> str:
    cities = CITIES[:n]
    listed = cities[0] if n == 1 else ", ".join(cities[:-1]) + " and " + cities[-1]
    return f"What's the weather in {listed}?"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=600)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from machine import footer, header, loadavg, machine_line, print_closing
    from pbd_core import ParallelBranchDecoder, RawPrompt
    from pbd_integrations.chat import render_chat
    from pbd_integrations.grammar import tool_call_constraint
    from pbd_integrations.parallel_tools import tool_call_plan

    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a given city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    load_before = loadavg()
    decoder = ParallelBranchDecoder.from_pretrained(args.model)
    tokenizer = decoder.tokenizer
    one_call = tool_call_constraint(tokenizer, [weather], "required")
    plan = tool_call_plan(tokenizer, [weather], "required")
    options = {"temperature": 0.0, "max_new_tokens": args.max_tokens}

    def prompt(n: int) -> RawPrompt:
        return RawPrompt(render_chat(decoder, [{"role": "user", "content": question(n)}], tools=[weather]))

    def cities(result) -> list[str]:
        from pbd_integrations.tool_calls import parse_tool_calls

        return [c.arguments.get("city") for c in parse_tool_calls(result.text)[1]]

    decoder.generate(prompt(2), constraint=one_call, tool_calls=plan, **options)  # warm up

    rows = []
    for n in args.calls:
        exactly_n = tool_call_constraint(tokenizer, [weather], "required", max_calls=n, min_calls=n)
        modes = {
            "parallel": {"constraint": one_call, "tool_calls": plan},
            "sequential": {"constraint": exactly_n, "parallel": False},
        }
        times: dict[str, list[float]] = {name: [] for name in modes}
        last: dict = {}
        for _ in range(args.repeats):
            for name, extra in modes.items():  # interleaved, so load changes hit both alike
                start = time.perf_counter()
                last[name] = decoder.generate(prompt(n), **options, **extra)
                times[name].append(time.perf_counter() - start)
        native = decoder.generate(prompt(n), constraint=plan.sequential, parallel=False, **options)
        made = {name: cities(result) for name, result in last.items()}
        stats = {name: result.stats for name, result in last.items()}
        best = {name: min(t) for name, t in times.items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        row = {
            "calls": n,
            "parallel_seconds_min": round(best["parallel"], 3),
            "sequential_seconds_min": round(best["sequential"], 3),
            "speedup_min": round(best["sequential"] / best["parallel"], 3),
            "parallel_seconds_median": round(median["parallel"], 3),
            "sequential_seconds_median": round(median["sequential"], 3),
            "speedup_median": round(median["sequential"] / median["parallel"], 3),
            "parallel_forward_passes": stats["parallel"].forward_passes,
            "sequential_forward_passes": stats["sequential"].forward_passes,
            "parallel_tokens": stats["parallel"].generated_tokens,
            "sequential_tokens": stats["sequential"].generated_tokens,
            "branch_stage_passes": stats["parallel"].stage_forward_passes["parallel"],
            "same_calls": made["parallel"] == made["sequential"],
            "asked_cities_in_order": made["parallel"] == CITIES[:n],
            "parallel_cities": made["parallel"],
            "sequential_cities": made["sequential"],
            "native_calls": len(cities(native)),
        }
        rows.append(row)
        print(f"N={n}: parallel {row['parallel_seconds_min']:.2f} s (median {row['parallel_seconds_median']:.2f}; "
              f"{row['parallel_forward_passes']} passes, {row['parallel_tokens']} tokens), sequential "
              f"{row['sequential_seconds_min']:.2f} s (median {row['sequential_seconds_median']:.2f}; "
              f"{row['sequential_forward_passes']} passes, {row['sequential_tokens']} tokens): "
              f"{row['speedup_min']:.2f}x (medians {row['speedup_median']:.2f}x); same calls: {row['same_calls']}; "
              f"the asked cities in order: {row['asked_cities_in_order']}; calls the model makes by itself one by "
              f"one: {row['native_calls']}", flush=True)
        if not row["same_calls"] or not row["asked_cities_in_order"]:
            print(f"    parallel: {made['parallel']}\n    sequential: {made['sequential']}", flush=True)

    report = {
        **header("parallel_tool_calls.py", argv, decoder),
        "repeats": args.repeats,
        "rows": rows,
        **footer(load_before),
    }
    print(machine_line(report))
    print_closing(report)
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
