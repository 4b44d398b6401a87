"""`pbd bench --server URL`: what parallel-branch decoding buys on a vLLM/SGLang server, measured.

Three measurements, in one run against one server:

- **fork ceiling**: 8 greedy continuations of 32 tokens that share a prefix,
  sent one after another vs all at once (what the server's continuous
  batching can give a parallel block at most, on this machine);
- **tasks**: the bench suite's caller-given tasks (caller branches), each
  decoded sequentially (``parallel=False``: the steps one after another, as
  one sequence) and with parallel branches, through the same server;
  wall-clock speed-up and step-by-step quality with the suite's scorer;
- **exactness**: every parallel branch's tokens against the server's own
  plain greedy completion of that branch's context alone.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import statistics
import time
from collections.abc import Callable
from typing import Any

from .runner import task_messages
from .suite import machine_info, versions
from .tasks import Task, score, split_steps

SCHEMA = "pbd-remote-bench/1"


def _plain_body(executor: Any, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    body = {
        "model": executor.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": False,
        "skip_special_tokens": False,
    }
    if executor.server_kind == "vllm":
        body["return_token_ids"] = True
    return body


def _token_ids(choice: dict[str, Any]) -> list[int]:
    if choice.get("token_ids") is not None:
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    return [int(t.split(":", 1)[1]) for t in tokens if isinstance(t, str) and t.startswith("token_id:")]


async def _complete_all(executor: Any, bodies: list[dict[str, Any]], concurrent: bool) -> tuple[float, list[dict]]:
    async with executor.async_client() as client:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 200:
                raise executor.http_error(response)
            return response.json()["choices"][0]

        t0 = time.perf_counter()
        if concurrent:
            choices = await asyncio.gather(*(one(b) for b in bodies))
        else:
            choices = [await one(b) for b in bodies]
        return time.perf_counter() - t0, list(choices)


def fork_ceiling(decoder: Any, *, k: int = 8, tokens: int = 32, prefix_tokens: int = 200) -> dict[str, Any]:
    """k continuations of a shared prefix, one after another and all at once (greedy, ``ignore_eos``)."""
    executor = decoder.executor
    words = ("The branches of this answer share this prefix, which the server keeps once in its cache. " * 40)
    prefix = executor.tokenizer(words, add_special_tokens=False)["input_ids"][:prefix_tokens]
    bodies = []
    for i in range(k):
        body = _plain_body(executor, prefix + executor.tokenizer(f" Step {i + 1}:", add_special_tokens=False)["input_ids"],
                           tokens)
        body["ignore_eos"] = True
        bodies.append(body)
    asyncio.run(_complete_all(executor, bodies[:1], False))  # warm the prefix cache
    one_by_one, sequential = asyncio.run(_complete_all(executor, bodies, False))
    at_once, concurrent = asyncio.run(_complete_all(executor, bodies, True))
    same = [_token_ids(a) == _token_ids(b) for a, b in zip(sequential, concurrent)]
    return {
        "k": k,
        "tokens_each": tokens,
        "prefix_tokens": len(prefix),
        "one_by_one_seconds": round(one_by_one, 3),
        "all_at_once_seconds": round(at_once, 3),
        "speedup": round(one_by_one / at_once, 3),
        "same_greedy_tokens": all(same),
    }


def branch_exactness(decoder: Any, result: Any) -> list[bool]:
    """Each branch's tokens == the server's plain greedy completion of its context (same length)."""
    executor = decoder.executor
    bodies = [_plain_body(executor, b.context_ids, max(1, len(b.token_ids))) for b in result.branches]
    _, choices = asyncio.run(_complete_all(executor, bodies, True))
    verdicts = []
    for branch, choice in zip(result.branches, choices):
        plain = _token_ids(choice)
        mine = [t for t in branch.token_ids if t not in executor.eos_token_ids]
        verdicts.append(plain[: len(mine)] == mine)
    return verdicts


def run_remote_bench(
    decoder: Any, tasks: list[Task], *, command: str | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure everything (see the module docstring) and return the results document."""
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fork = fork_ceiling(decoder)
    if progress:
        progress("fork ceiling")
    runs = []
    for task in tasks:
        options = dict(
            branches=list(task.branches),
            max_new_tokens=task.max_new_tokens,
            max_branch_tokens=task.max_branch_tokens,
            max_branches=max(16, task.size),
            temperature=0.0,
        )
        row: dict[str, Any] = {"task": task.id, "family": task.family, "size": task.size}
        for method, parallel in (("sequential", False), ("parallel", True)):
            t0 = time.perf_counter()
            result = decoder.generate(task_messages(task), parallel=parallel, **options)
            seconds = time.perf_counter() - t0
            steps = {b.title: b.text for b in result.branches} or split_steps(result.raw_text)[0]
            row[method] = {
                "seconds": round(seconds, 3),
                "generated_tokens": result.stats.generated_tokens,
                "finish_reason": result.finish_reason,
                "stage_seconds": {k: round(v, 3) for k, v in result.stats.stage_seconds.items()},
                "stage_tokens": dict(result.stats.stage_tokens),
                "quality": score(task, steps),
            }
            if parallel:
                exact = branch_exactness(decoder, result)
                row["branches_equal_plain_completion"] = sum(exact)
                row["branches"] = len(exact)
        row["speedup"] = round(row["sequential"]["seconds"] / row["parallel"]["seconds"], 3)
        # The steps themselves: the sequential run writes them in its "parallel" stage too, one after another.
        row["steps_speedup"] = round(
            row["sequential"]["stage_seconds"]["parallel"] / max(row["parallel"]["stage_seconds"]["parallel"], 1e-9), 3
        )
        runs.append(row)
        if progress:
            progress(task.id)
    speedups = [r["speedup"] for r in runs]
    return {
        "schema": SCHEMA,
        "created": created,
        "command": command,
        "server": {"url": decoder.executor.base_url, "kind": decoder.executor.server_kind,
                   "model": decoder.executor.model, "max_model_len": decoder.context_window},
        "machine": machine_info(),
        "versions": versions(),
        "fork_ceiling": fork,
        "summary": {
            "tasks": len(runs),
            "speedup_median": round(statistics.median(speedups), 3) if speedups else None,
            "steps_speedup_median": round(statistics.median([r["steps_speedup"] for r in runs]), 3) if runs else None,
            "speedup_by_size": {
                str(size): round(statistics.median([r["speedup"] for r in runs if r["size"] == size]), 3)
                for size in sorted({r["size"] for r in runs})
            },
            "branches_equal_plain_completion": f"{sum(r['branches_equal_plain_completion'] for r in runs)}"
                                               f"/{sum(r['branches'] for r in runs)}",
        },
        "runs": runs,
    }


def format_report(doc: dict[str, Any]) -> str:
    fork, summary = doc["fork_ceiling"], doc["summary"]
    lines = [
        f"server {doc['server']['url']} ({doc['server']['kind']}, {doc['server']['model']})",
        f"fork ceiling: {fork['k']} x {fork['tokens_each']} tokens on a {fork['prefix_tokens']}-token prefix: "
        f"{fork['one_by_one_seconds']} s one by one, {fork['all_at_once_seconds']} s at once = {fork['speedup']}x "
        f"(same greedy tokens: {fork['same_greedy_tokens']})",
        f"caller-branch tasks: {summary['tasks']}, median end-to-end speed-up parallel vs sequential "
        f"{summary['speedup_median']}x (by size {summary['speedup_by_size']}); the steps alone: "
        f"{summary['steps_speedup_median']}x",
        f"branches equal to the server's plain completion of their context: {summary['branches_equal_plain_completion']}",
    ]
    for run in doc["runs"]:
        lines.append(
            f"  {run['task']:<28} seq {run['sequential']['seconds']:7.2f} s  par {run['parallel']['seconds']:7.2f} s"
            f"  {run['speedup']:5.2f}x (steps {run['steps_speedup']:5.2f}x; conclusion tokens seq "
            f"{run['sequential']['stage_tokens']['merge']}, par {run['parallel']['stage_tokens']['merge']})"
            f"  exact {run['branches_equal_plain_completion']}/{run['branches']}"
        )
    if doc.get("command"):
        lines.append(f"command: {doc['command']}")
    return "\n".join(lines)


__all__ = ["branch_exactness", "fork_ceiling", "format_report", "run_remote_bench"]
