"""Concurrent requests on one decoder: continuous batching against one request after another.

    python benchmarks/concurrent_requests.py [--model default] [--requests 8] [--tokens 48] [--branches 0]

In one process, on one decoder (greedy):

- **step cost**: one forward pass with k new tokens on a 200-token cache
  (`pbd_integrations.bench.step_cost`); the ceiling of r requests of b streams each is
  ``r * cost(b) / cost(r * b)``, and for this run's streams (they end at different lengths) the
  same sum taken step by step over their live streams (`run_ceiling`);
- **one after another**: the requests sent one at a time (what the old per-decoder lock gave);
- **all at once**: the same requests from ``requests`` threads, batched by the decoder; the
  answers must be token-identical to the ones sent alone;
- **time to first token** of a request that arrives while the others decode, against the same
  request alone.

With ``--branches N`` every request also asks for N caller branches (live streams = requests x N).
It prints the CPU flags, the command and the numbers (``--json`` for a machine-readable copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when imported from elsewhere

from machine import footer, header, loadavg, machine_line, print_closing  # noqa: E402
from pbd_core import ParallelBranchDecoder  # noqa: E402
from pbd_core.types import TokenEvent  # noqa: E402
from pbd_integrations.bench.step_cost import cost_at, measure_step_cost  # noqa: E402

SUBJECTS = ["the sea", "a mountain", "a city at night", "a forest", "the desert", "a river", "a storm", "a library",
            "a train", "a garden", "the moon", "a market", "a bridge", "an island", "a castle", "a harbor"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write a long, detailed description of {SUBJECTS[i % len(SUBJECTS)]}."}]
            for i in range(n)]


def run_ceiling(streams: list[list[int]], step_cost: dict) -> float:
    """Best possible ratio for these requests: ``streams[r]`` are the token counts of request r's streams
    (one for plain decoding, one per branch). One after another, request r pays cost(its live streams)
    per step; all at once, a step pays cost(every request's live streams together)."""
    def live(lengths, i):
        return sum(n > i for n in lengths)

    longest = max(max(lengths) for lengths in streams)
    alone = sum(cost_at(step_cost, live(lengths, i)) for lengths in streams for i in range(max(lengths)))
    together = sum(cost_at(step_cost, sum(live(lengths, i) for lengths in streams)) for i in range(longest))
    return alone / together


def all_at_once(decoder, messages, options) -> tuple[float, list]:
    results: list = [None] * len(messages)
    barrier = threading.Barrier(len(messages) + 1)

    def one(i):
        barrier.wait()
        results[i] = decoder.generate(messages[i], **options)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, results


def first_token_seconds(decoder, message, options) -> float:
    t0 = time.perf_counter()
    stream = decoder.stream(message, **options)
    for event in stream:
        if isinstance(event, TokenEvent):
            stream.close()
            return time.perf_counter() - t0
    return time.perf_counter() - t0


def ttft_under_load(decoder, messages, options) -> float:
    """The last request arrives once the others have started decoding; its time to first token."""
    started = threading.Barrier(len(messages))  # the others + this thread
    threads = []
    for m in messages[:-1]:
        def one(m=m):
            stream = decoder.stream(m, **options)
            first = True
            for event in stream:
                if first and isinstance(event, TokenEvent):
                    first = False
                    started.wait()
        threads.append(threading.Thread(target=one))
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.2)  # they are in full swing
    seconds = first_token_seconds(decoder, messages[-1], options)
    for t in threads:
        t.join()
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48, help="max_new_tokens of each request")
    parser.add_argument("--branches", type=int, default=0, help="caller branches per request (0: plain decoding)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    decoder = ParallelBranchDecoder.from_pretrained(args.model, dtype=args.dtype)
    streams = args.requests * max(1, args.branches)
    ks = sorted({1, 2, 4, 8, 16, 32, streams} & set(range(1, streams + 1)) | {streams})
    step_cost = measure_step_cost(decoder.model, ks=ks, cache_tokens=200)
    messages = prompts(args.requests)
    options = dict(temperature=0.0, max_new_tokens=args.tokens)
    if args.branches:
        options.update(branches=[f"Aspect {i + 1}" for i in range(args.branches)],
                       max_branch_tokens=max(4, args.tokens // args.branches), max_branches=max(16, args.branches))
    else:
        options.update(parallel=False)
    load_before = loadavg()
    decoder.generate(messages[0], **{**options, "max_new_tokens": 4})  # warm-up

    t0 = time.perf_counter()
    alone = [decoder.generate(m, **options) for m in messages]
    one_by_one = time.perf_counter() - t0
    steps_before = decoder.scheduler.steps
    at_once, together = all_at_once(decoder, messages, options)
    steps = decoder.scheduler.steps - steps_before
    identical = all(a.token_ids == b.token_ids and a.text == b.text for a, b in zip(alone, together))

    tokens = sum(r.stats.generated_tokens for r in alone)
    if args.branches:  # the branch stage's streams (plan and conclusion are short here)
        lengths = [[len(b.token_ids) for b in r.branches] or [r.stats.generated_tokens] for r in alone]
    else:
        lengths = [[r.stats.generated_tokens] for r in alone]
    ratio = one_by_one / at_once
    per_request = max(1, args.branches)
    ceiling_k = args.requests * cost_at(step_cost, per_request) / cost_at(step_cost, streams)
    ceiling = run_ceiling(lengths, step_cost)
    ttft_alone = first_token_seconds(decoder, messages[-1], options)
    ttft_busy = ttft_under_load(decoder, messages, options)
    report = {
        **header("concurrent_requests.py", argv, decoder),
        "requests": args.requests,
        "branches_per_request": args.branches,
        "live_streams": streams,
        "tokens": tokens,
        "one_by_one_seconds": round(one_by_one, 3),
        "all_at_once_seconds": round(at_once, 3),
        "throughput_one_by_one": round(tokens / one_by_one, 2),
        "throughput_all_at_once": round(tokens / at_once, 2),
        "ratio": round(ratio, 3),
        "ceiling_k": round(ceiling_k, 3),
        "ceiling_run": round(ceiling, 3),
        "of_ceiling_run": round(ratio / ceiling, 3),
        "forward_passes_all_at_once": steps,
        "identical_to_alone": identical,
        "ttft_alone_seconds": round(ttft_alone, 3),
        "ttft_while_others_decode_seconds": round(ttft_busy, 3),
        "step_cost": step_cost["rows"],
        **footer(load_before),
    }
    print(machine_line(report))
    print(f"{args.requests} requests x {max(1, args.branches)} stream(s), {tokens} tokens: one by one "
          f"{one_by_one:.2f} s ({report['throughput_one_by_one']} tok/s), all at once {at_once:.2f} s "
          f"({report['throughput_all_at_once']} tok/s) in {steps} forward passes")
    print(f"throughput ratio {ratio:.2f}x; step-cost ceiling {args.requests} x cost({per_request}) / cost({streams}) = "
          f"{ceiling_k:.2f}x, for this run's "
          f"stream lengths {ceiling:.2f}x -> {100 * ratio / ceiling:.1f}% of the ceiling; answers identical to "
          f"alone: {identical}")
    print(f"time to first token: alone {ttft_alone:.3f} s, arriving while {args.requests - 1} others decode "
          f"{ttft_busy:.3f} s")
    print("step cost (ms): " + ", ".join(f"k={r['k']}: {r['median_ms']:.1f}" for r in step_cost["rows"]))
    print_closing(report)
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
