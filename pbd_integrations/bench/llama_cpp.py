"""`pbd bench --backend llama.cpp`: PBD on llama.cpp's kernels against llama.cpp itself, in one run.

Everything is measured in one process on one GGUF file (the model's own):

- **llama.cpp's step-cost ceiling**: one ``llama_decode`` with k new tokens, one in each of k
  sequences sharing a prefix in one unified KV cache (exactly a parallel-stage step), against
  one token: ``ceiling(k) = k * cost(1) / cost(k)``. The step is removed and repeated, so every
  repeat sees the same cache.
- **plain llama.cpp**: greedy decoding, one token per ``llama_decode``, in a fresh
  single-sequence context: what a user running llama.cpp gets (no PBD code on the path).
- **branch stage**: the same question with k caller-given branches, decoded with PBD on
  llama.cpp sequentially (``parallel=False``: the titled steps one after another) and in
  parallel; the ratio of the branch stage's tokens per second against the ceiling of that run
  (computed from the live-branch count of each of its steps, since branches end at different
  lengths). Optionally the same on the torch executor (``torch_ks``), against torch's ceiling.
- **end to end**: the bench suite's caller-branch tasks, timed as PBD on llama.cpp (parallel),
  the same executor writing the steps sequentially, and plain llama.cpp writing the sequential
  answer's tokens (the same prompt, as many tokens as the sequential answer has).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from collections.abc import Callable
from typing import Any

from pbd_core.prompting import prompt_ids

from .runner import task_messages
from .step_cost import cost_at
from .suite import _cpu_flags, _loadavg, machine_info, versions
from .tasks import Task, score, split_steps

SCHEMA = "pbd-llama-cpp-bench/1"

TOPICS = [
    "rivers", "mountains", "deserts", "forests", "oceans", "volcanoes", "glaciers", "islands",
    "caves", "lakes", "canyons", "reefs", "swamps", "plains", "waterfalls", "tundra",
]
BRANCH_SYSTEM = (
    "Write each requested part as a step: '####', the title, ':', then a long and detailed paragraph. "
    "After all steps write '####%%%%' and a one-line conclusion."
)
PREFIX_TEXT = (
    "Compare rivers, mountains, deserts, forests, oceans, volcanoes, glaciers and islands: for each one, "
    "describe its climate, its wildlife, how people live there and what threatens it today. "
)


# --------------------------------------------------------------------------- llama.cpp itself


def cpu_flags() -> list[str]:
    """The vector-unit flags that decide llama.cpp's and torch's kernels (AVX2, AVX-512, AMX)."""
    base = {"avx", "avx2", "fma", "f16c"}
    return sorted(f for f in _cpu_flags() if f.startswith(("avx512", "amx")) or f in base)


def llama_cpp_step_cost(model: Any, ks: list[int], *, prefix_tokens: int = 200, repeats: int = 30,
                        warmup: int = 5) -> dict[str, Any]:
    """Median ms of one ``llama_decode`` with k tokens in k sequences sharing a prefix, for each k.

    Same shape as `pbd_integrations.bench.step_cost.measure_step_cost` (``rows`` of ``k``,
    ``median_ms``, ``ceiling``) so `cost_at` reads both; ``tree_ms`` is the same step through
    `LlamaCppTree.append` (bookkeeping and the logits copy included: what the engine pays).
    """
    from pbd_core.masks import TRUNK

    prefix = (model.tokenize(PREFIX_TEXT) * (prefix_tokens // 8 + 1))[:prefix_tokens]
    rows = []
    for k in sorted(set(ks)):
        tree = model.new_tree()
        tree.append(prefix, [TRUNK] * len(prefix), list(range(len(prefix))), None, None)
        block = len(prefix)
        seeds = [model.tokenize(f"####Part {i + 1}:") for i in range(k)]
        ids, branch, position = [], [], []
        for b, seed in enumerate(seeds):
            ids += seed
            branch += [b] * len(seed)
            position += list(range(block, block + len(seed)))
        tree.append(ids, branch, position, block, None)
        step_ids = [model.tokenize(" The")[0]] * k
        step_pos = [block + len(seed) for seed in seeds]
        seqs = [tree._branches[b].seq for b in range(k)]
        length = len(tree)
        raw, wrapped = [], []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model._decode(step_ids, step_pos, seqs, list(range(k)))
            t1 = time.perf_counter()
            for b, seq in enumerate(seqs):
                model._seq_rm(seq, step_pos[b], -1)
            t2 = time.perf_counter()
            tree.append(step_ids, list(range(k)), step_pos, block, list(range(k)))
            t3 = time.perf_counter()
            tree.crop(length)
            if i >= warmup:
                raw.append((t1 - t0) * 1e3)
                wrapped.append((t3 - t2) * 1e3)
        tree.crop(0)
        rows.append({"k": k, "median_ms": round(statistics.median(raw), 3),
                     "tree_ms": round(statistics.median(wrapped), 3)})
    base = rows[0]["median_ms"] if rows[0]["k"] == 1 else None
    for row in rows:
        row["ceiling"] = round(row["k"] * base / row["median_ms"], 3) if base else None
        row["tok_per_s"] = round(row["k"] * 1e3 / row["median_ms"], 1)
    return {"prefix_tokens": len(prefix), "repeats": repeats, "warmup": warmup, "threads": model.n_threads,
            "rows": rows}


def plain_llama_cpp(model: Any, prompt: list[int], tokens: int, *, ignore_eos: bool = True) -> dict[str, Any]:
    """Greedy llama.cpp decoding of ``prompt`` in a fresh single-sequence context (no PBD code).

    Returns the prefill and decode seconds and the tokens decoded (``ignore_eos=False`` stops at
    an end-of-generation token).
    """
    import llama_cpp
    import numpy as np

    n_ctx = max(2048, len(prompt) + tokens + 8)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = n_ctx
    params.n_threads = params.n_threads_batch = model.n_threads
    ctx = llama_cpp.llama_init_from_model(model._model, params)
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:

        def decode(ids: list[int], start: int):
            batch.n_tokens = len(ids)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(ids) - 1
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed in the plain llama.cpp baseline")
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(model.n_vocab,))

        t0 = time.perf_counter()
        logits = decode(prompt, 0)
        t1 = time.perf_counter()
        token, count = int(logits.argmax()), 0
        while count < tokens:
            count += 1
            if not ignore_eos and token in model.eos_token_ids:
                break
            logits = decode([token], len(prompt) + count - 1)
            token = int(logits.argmax())
        t2 = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return {"prompt_tokens": len(prompt), "tokens": count, "prefill_seconds": round(t1 - t0, 4),
            "decode_seconds": round(t2 - t1, 4), "seconds": round(t2 - t0, 4),
            "tok_per_s": round(count / max(t2 - t1, 1e-9), 2)}


# --------------------------------------------------------------------------- PBD's branch stage


def run_ceiling(lengths: list[int], step_cost: dict[str, Any]) -> float:
    """Best possible speed-up of a branch stage whose branches sampled ``lengths`` tokens."""
    steps = [sum(n > i for n in lengths) for i in range(max(lengths))]
    return sum(lengths) * cost_at(step_cost, 1) / sum(cost_at(step_cost, live) for live in steps)


def _stage_rate(result: Any) -> float:
    return result.stats.stage_tokens["parallel"] / max(result.stats.stage_seconds["parallel"], 1e-9)


def kernel_rate(lengths: list[int], step_cost: dict[str, Any]) -> float:
    """Branch tokens per second of a stage whose branches sampled ``lengths`` tokens, if every step cost
    only the kernel's own time for its live-branch count (no sampling, no bookkeeping): the bound."""
    steps = [sum(n > i for n in lengths) for i in range(max(lengths))]
    return sum(lengths) * 1e3 / sum(cost_at(step_cost, live) for live in steps)


def branch_stage(decoder: Any, step_cost: dict[str, Any], ks: list[int], *, branch_tokens: int = 32,
                 plain: Callable[[list[int], int], dict[str, Any]] | None = None,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """k caller branches, sequential vs parallel on ``decoder``: the branch stage against the ceilings.

    ``of_ceiling`` compares speed-ups (parallel over sequential, both through PBD, against
    ``k * cost(1) / cost(k)`` for this run's live-branch counts); ``of_kernel_bound`` compares the
    parallel stage's tokens per second with what the kernels alone would give for the same steps,
    so the engine's own per-step overhead counts against it. ``plain(prompt, tokens)``, when given,
    times plain decoding of the same prompt for as many tokens as the sequential answer.
    """
    rows = []
    for k in ks:
        titles = [f"About {topic}" for topic in TOPICS[:k]]
        messages = [{"role": "system", "content": BRANCH_SYSTEM},
                    {"role": "user", "content": "Describe " + ", ".join(TOPICS[:k]) + "."}]
        options = dict(branches=titles, max_branch_tokens=branch_tokens, max_new_tokens=branch_tokens * k + 1,
                       max_branches=max(16, k), temperature=0.0)
        decoder.generate(messages, **{**options, "max_branch_tokens": 2})  # warm-up
        t0 = time.perf_counter()
        sequential = decoder.generate(messages, parallel=False, **options)
        t1 = time.perf_counter()
        parallel = decoder.generate(messages, **options)
        t2 = time.perf_counter()
        lengths = [len(b.token_ids) for b in parallel.branches]
        ceiling = run_ceiling(lengths, step_cost)
        bound = kernel_rate(lengths, step_cost)
        speedup = _stage_rate(parallel) / _stage_rate(sequential)
        row = {
            "k": k,
            "branch_tokens": sum(lengths),
            "sequential_tokens": sequential.stats.generated_tokens,
            "parallel_forward_passes": parallel.stats.stage_forward_passes["parallel"],
            "longest_branch": max(lengths),
            "sequential_tok_s": round(_stage_rate(sequential), 2),
            "parallel_tok_s": round(_stage_rate(parallel), 2),
            "speedup": round(speedup, 3),
            "ceiling_run": round(ceiling, 3),
            "of_ceiling": round(speedup / ceiling, 3),
            "kernel_bound_tok_s": round(bound, 2),
            "of_kernel_bound": round(_stage_rate(parallel) / bound, 3),
            "sequential_seconds": round(t1 - t0, 3),
            "parallel_seconds": round(t2 - t1, 3),
        }
        if plain is not None:
            baseline = plain(prompt_ids(decoder.tokenizer, messages), sequential.stats.generated_tokens)
            row["plain_seconds"] = baseline["seconds"]
            row["speedup_vs_plain"] = round(baseline["seconds"] / row["parallel_seconds"], 3)
        rows.append(row)
        if progress:
            progress(f"k={k}")
    return rows


# --------------------------------------------------------------------------- end to end


def end_to_end(decoder: Any, model: Any, tasks: list[Task], *,
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Caller-branch tasks: PBD parallel, PBD sequential and plain llama.cpp, all on llama.cpp."""
    runs = []
    for index, task in enumerate(tasks):
        options = dict(branches=list(task.branches), max_new_tokens=task.max_new_tokens,
                       max_branch_tokens=task.max_branch_tokens, max_branches=max(16, task.size), temperature=0.0)
        messages = task_messages(task)
        row: dict[str, Any] = {"task": task.id, "family": task.family, "size": task.size}
        order = (("sequential", False, "recompute"), ("parallel", True, "recompute"), ("parallel_reuse", True, "reuse"))
        for method, parallel, merge in order if index % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            result = decoder.generate(messages, parallel=parallel, merge=merge, **options)
            seconds = time.perf_counter() - t0
            steps = {b.title: b.text for b in result.branches} or split_steps(result.raw_text)[0]
            row[method] = {
                "seconds": round(seconds, 3),
                "generated_tokens": result.stats.generated_tokens,
                "prompt_tokens": result.stats.prompt_tokens,
                "finish_reason": result.finish_reason,
                "stage_seconds": {k: round(v, 3) for k, v in result.stats.stage_seconds.items()},
                "stage_tokens": dict(result.stats.stage_tokens),
                "quality": score(task, steps),
            }
        prompt = prompt_ids(decoder.tokenizer, messages)
        row["plain_llama_cpp"] = plain_llama_cpp(model, prompt, row["sequential"]["generated_tokens"])
        for method in ("parallel", "parallel_reuse"):
            suffix = "" if method == "parallel" else "_reuse"
            row["speedup_vs_plain" + suffix] = round(row["plain_llama_cpp"]["seconds"] / row[method]["seconds"], 3)
            row["speedup_vs_sequential" + suffix] = round(row["sequential"]["seconds"] / row[method]["seconds"], 3)
        runs.append(row)
        if progress:
            progress(task.id)
    return runs


# --------------------------------------------------------------------------- the whole run


def run_llama_cpp_bench(
    decoder: Any,
    tasks: list[Task],
    *,
    ks: list[int] = (1, 2, 4, 8, 16),
    branch_tokens: int = 32,
    torch_decoder: Any = None,
    torch_threads: int | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure everything in the module docstring and return the results document."""
    import llama_cpp

    model = decoder.executor.llama_cpp_model
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_before = _loadavg()
    step_cost = llama_cpp_step_cost(model, sorted(set([1, *ks])))
    if progress:
        progress("llama.cpp step cost")
    prompt = model.tokenize(model.tokenizer.apply_chat_template(
        [{"role": "user", "content": PREFIX_TEXT}], tokenize=False, add_generation_prompt=True))
    plain = plain_llama_cpp(model, prompt, 64)
    if progress:
        progress("plain llama.cpp")
    stage = branch_stage(decoder, step_cost, list(ks), branch_tokens=branch_tokens,
                         plain=lambda ids, n: plain_llama_cpp(model, ids, n), progress=progress)
    torch_part = None
    if torch_decoder is not None:
        import torch

        from .step_cost import measure_step_cost

        previous = torch.get_num_threads()
        # from_gguf leaves torch one thread (it only samples there); its own executor gets the cores.
        torch.set_num_threads(torch_threads or model.n_threads)
        try:
            torch_cost = measure_step_cost(torch_decoder.model, ks=sorted(set([1, *ks])), cache_tokens=200)
            torch_part = {"threads": torch.get_num_threads(), "dtype": torch_cost["dtype"], "step_cost": torch_cost,
                          "branch_stage": branch_stage(torch_decoder, torch_cost, list(ks),
                                                       branch_tokens=branch_tokens, progress=progress)}
        finally:
            torch.set_num_threads(previous)
    runs = end_to_end(decoder, model, tasks, progress=progress)
    by_size: dict[str, Any] = {}
    for size in sorted({r["size"] for r in runs}):
        mine = [r for r in runs if r["size"] == size]
        by_size[str(size)] = {
            "vs_plain_llama_cpp": round(statistics.median([r["speedup_vs_plain"] for r in mine]), 3),
            "vs_plain_llama_cpp_reuse": round(statistics.median([r["speedup_vs_plain_reuse"] for r in mine]), 3),
            "vs_sequential": round(statistics.median([r["speedup_vs_sequential"] for r in mine]), 3),
            "sequential_tokens": statistics.median([r["sequential"]["generated_tokens"] for r in mine]),
            "parallel_tokens": statistics.median([r["parallel"]["generated_tokens"] for r in mine]),
        }
    stage_by_k = {r["k"]: r for r in stage}
    return {
        "schema": SCHEMA,
        "created": created,
        "command": command,
        "machine": {**machine_info(), "cpu_flags": cpu_flags(), "load_average_before": load_before},
        "versions": {**versions(), "llama_cpp_python": llama_cpp.__version__},
        "model": {"name": decoder.model_name, "gguf": str(getattr(model, "path", "")), "threads": model.n_threads},
        "step_cost": step_cost,
        "plain_llama_cpp": plain,
        "load_average_after": _loadavg(),
        "branch_stage": stage,
        "torch": torch_part,
        "runs": runs,
        "summary": {
            "of_ceiling": {str(k): r["of_ceiling"] for k, r in stage_by_k.items()},
            "of_kernel_bound": {str(k): r["of_kernel_bound"] for k, r in stage_by_k.items()},
            "branch_question_vs_plain": {str(k): r.get("speedup_vs_plain") for k, r in stage_by_k.items()},
            "ceiling_k": {str(r["k"]): r["ceiling"] for r in step_cost["rows"]},
            "plain_llama_cpp_tok_s": plain["tok_per_s"],
            "pbd_branch_tok_s": {str(k): r["parallel_tok_s"] for k, r in stage_by_k.items()},
            "torch_branch_tok_s": ({str(r["k"]): r["parallel_tok_s"] for r in torch_part["branch_stage"]}
                                   if torch_part else None),
            "end_to_end_by_size": by_size,
        },
    }


def format_report(doc: dict[str, Any]) -> str:
    """A plain-text report of `run_llama_cpp_bench`'s document."""
    m = doc["machine"]
    lines = [
        f"{doc['model']['name']} on llama.cpp ({doc['versions']['llama_cpp_python']}), "
        f"{doc['model']['threads']} threads; cpu {m.get('cpu')}; flags {' '.join(m.get('cpu_flags') or []) or '-'}",
        f"plain llama.cpp: {doc['plain_llama_cpp']['tok_per_s']} tok/s (greedy, one sequence)",
        "",
        "  k | llama_decode ms | ceiling | PBD seq tok/s | PBD par tok/s | speed-up | run ceiling | of ceiling"
        " | kernel bound tok/s | of bound | e2e s: plain, PBD seq, PBD par",
    ]
    cost = {r["k"]: r for r in doc["step_cost"]["rows"]}
    for r in doc["branch_stage"]:
        c = cost[r["k"]]
        lines.append(
            f"{r['k']:>3} | {c['median_ms']:>15.2f} | {c['ceiling']:>6.2f}x | {r['sequential_tok_s']:>13.1f} | "
            f"{r['parallel_tok_s']:>13.1f} | {r['speedup']:>7.2f}x | {r['ceiling_run']:>10.2f}x | "
            f"{100 * r['of_ceiling']:>9.1f}% | {r['kernel_bound_tok_s']:>18.1f} | {100 * r['of_kernel_bound']:>7.1f}% | "
            f"{r.get('plain_seconds', float('nan')):.2f}, {r['sequential_seconds']:.2f}, {r['parallel_seconds']:.2f}")
    if doc.get("torch"):
        t = doc["torch"]
        lines.append(f"\ntorch executor ({t['dtype']}, {t['threads']} threads), same question:")
        for r in t["branch_stage"]:
            lines.append(f"  k={r['k']:>2}: seq {r['sequential_tok_s']:6.1f} tok/s, par {r['parallel_tok_s']:6.1f} "
                         f"tok/s, {r['speedup']:.2f}x of {r['ceiling_run']:.2f}x ceiling "
                         f"({100 * r['of_ceiling']:.1f}%)")
    lines.append("\nend to end, caller-branch tasks (seconds; plain llama.cpp writes the sequential answer's tokens):")
    for r in doc["runs"]:
        plain = r.get("plain_llama_cpp", {}).get("seconds")
        lines.append(
            f"  {r['task']:<24} N={r['size']:>2}  plain llama.cpp {plain:6.2f}  PBD seq {r['sequential']['seconds']:6.2f}"
            f"  PBD par {r['parallel']['seconds']:6.2f} (reuse {r['parallel_reuse']['seconds']:6.2f})"
            f"  = {r['speedup_vs_plain']:.2f}x ({r['speedup_vs_plain_reuse']:.2f}x) vs plain; tokens seq "
            f"{r['sequential']['generated_tokens']}, par {r['parallel']['generated_tokens']}")
    lines.append(f"by size (median): {doc['summary']['end_to_end_by_size']}")
    lines.append(f"load average before {doc['machine']['load_average_before']}, after {doc['load_average_after']}")
    if doc.get("command"):
        lines.append(f"command: {doc['command']}")
    return "\n".join(lines)


__all__ = ["branch_stage", "end_to_end", "format_report", "llama_cpp_step_cost", "plain_llama_cpp",
           "run_ceiling", "run_llama_cpp_bench"]
