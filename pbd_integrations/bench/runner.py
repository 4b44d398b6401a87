"""Run every task with every method on one model, interleaved, and record what was measured.

Methods (same model, same chat template, same greedy settings, one process):

- ``sequential``: plain token-by-token decoding of the same prompt (``parallel=False``),
  the paper's baseline. With caller-given steps it writes the same titled steps one after another.
- ``batched``: the steps of the plan expanded as separate sequences in one padded batch,
  each with its own copy of the prefix (`pbd_integrations.bench.batched`). Its contexts are the
  exact ``context_ids`` the engine conditioned each branch on, so its branch texts must
  equal the engine's (greedy, fp32).
- ``pbd_reuse`` / ``pbd_recompute``: parallel-branch decoding with either merge mode.

Modes: ``given`` (the caller passes the step titles) and ``planned`` (the model writes the plan).

The methods of one task run back to back and their order alternates from
task to task, so machine drift hits all of them alike.
"""

from __future__ import annotations

import difflib
import statistics
import time
from typing import Any, Callable

from pbd_core.plan_format import seed_text

from .batched import batched_expand
from .memory import ForwardTimer, PeakRSS, kv_bytes_per_token
from .step_cost import ceiling_at, cost_at
from .tasks import Task, score, split_steps

METHODS: tuple[str, ...] = ("sequential", "batched", "pbd_reuse", "pbd_recompute")
MODES: tuple[str, ...] = ("given", "planned")


def task_messages(task: Task) -> list[dict[str, str]]:
    """The chat prompt every method gets: the paper's branch-format system prompt and the task."""
    from pbd_integrations.prompts import PARALLEL_SYSTEM_PROMPT

    return [{"role": "system", "content": PARALLEL_SYSTEM_PROMPT}, {"role": "user", "content": task.prompt}]


def _order(index: int) -> list[str]:
    """Method order for the ``index``-th task: batched always after a PBD run (it needs its contexts)."""
    if index % 2 == 0:
        return ["sequential", "pbd_reuse", "batched", "pbd_recompute"]
    return ["pbd_recompute", "batched", "pbd_reuse", "sequential"]


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()


def _steps_of(result) -> dict[str, str]:
    if result.branches:
        return {b.title: b.text for b in result.branches}
    return split_steps(result.raw_text)[0]


def _record(task: Task, mode: str, method: str, seconds: float, mem: PeakRSS, kv_per_token: int) -> dict[str, Any]:
    return {
        "task": task.id,
        "family": task.family,
        "size": task.size,
        "mode": mode,
        "method": method,
        "wall_seconds": round(seconds, 6),
        "peak_rss_bytes": mem.peak,
        "rss_growth_bytes": mem.peak - mem.start,
        "kv_bytes_per_token": kv_per_token,
    }


def _pbd_fields(row: dict[str, Any], result, kv_per_token: int) -> None:
    stats = result.stats.as_dict()
    par_s, par_n = stats["stage_seconds"]["parallel"], stats["stage_tokens"]["parallel"]
    par_f = stats["stage_forward_passes"]["parallel"]
    row.update(
        stats=stats,
        generated_tokens=stats["generated_tokens"],
        forward_passes=stats["forward_passes"],
        tokens_per_forward_pass=stats["tokens_per_forward_pass"],
        tokens_per_second=round(stats["generated_tokens"] / row["wall_seconds"], 3) if row["wall_seconds"] else 0.0,
        parallel_tokens_per_second=round(par_n / par_s, 3) if par_s > 0 and par_n else None,
        parallel_ms_per_pass=round(1000 * par_s / par_f, 4) if par_f else None,
        parallel_tokens_per_pass=round(par_n / par_f, 4) if par_f else None,
        kv_tokens=stats["kv_tokens"],
        kv_bytes=stats["kv_tokens"] * kv_per_token,
        finish_reason=result.finish_reason,
        parallel=result.parallel,
        branches=[{"title": b.title, "text": b.text, "finish_reason": b.finish_reason, "tokens": len(b.token_ids)}
                  for b in result.branches],
        text=result.raw_text,  # the branch format: `resummarize` splits its steps again
    )


def run_task(decoder, task: Task, mode: str, index: int, *, methods=METHODS) -> tuple[list[dict], dict]:
    """All methods on one task in one mode. Returns the run rows and the task's cross-method checks."""
    messages = task_messages(task)
    kv_per_token = kv_bytes_per_token(decoder.model)
    common = dict(
        max_new_tokens=task.max_new_tokens,
        max_branch_tokens=task.max_branch_tokens,
        max_branches=max(16, task.size),
        temperature=0.0,
        branches=list(task.branches) if mode == "given" else None,
    )
    rows: dict[str, dict] = {}
    results: dict[str, Any] = {}
    batched_out = None
    for method in _order(index):
        if method not in methods:
            continue
        if method == "batched":
            source = results.get("pbd_reuse") or results.get("pbd_recompute")
            branches = [b for b in source.branches if b.block == 0] if source is not None else []
            if not branches:
                continue  # no plan was found: nothing to expand
            with PeakRSS() as mem, ForwardTimer(decoder.model) as fwd:
                t0 = time.perf_counter()
                out = batched_expand(decoder.model, decoder.tokenizer, [b.context_ids for b in branches],
                                     max_new_tokens=task.max_branch_tokens,
                                     eos_token_ids=list(getattr(decoder, "eos_token_ids", None) or []) or None)
                seconds = time.perf_counter() - t0
            row = _record(task, mode, method, seconds, mem, kv_per_token)
            row.update(
                generated_tokens=out.generated_tokens,
                forward_passes=out.forward_passes,
                tokens_per_forward_pass=round(out.generated_tokens / out.forward_passes, 4),
                tokens_per_second=round(out.generated_tokens / seconds, 3),
                prefill_seconds=round(out.prefill_seconds, 6),
                # the batched prefill of every prefix copy counts as "plan", the batched decode as "parallel"
                stage_seconds={"plan": round(out.prefill_seconds, 6), "parallel": round(seconds - out.prefill_seconds, 6),
                               "merge": 0.0},
                prompt_tokens=out.prompt_tokens,
                kv_tokens=out.peak_kv_tokens,
                kv_bytes=out.peak_kv_tokens * kv_per_token,
                finish_reason="stop",
                parallel=True,
                branches=[{"title": b.title, "text": t, "finish_reason": r, "tokens": len(ids)}
                          for b, t, r, ids in zip(branches, out.texts, out.finish_reasons, out.token_ids)],
                text="".join(seed_text(b.title) + t for b, t in zip(branches, out.texts)),
            )
            steps = {b.title: t for b, t in zip(branches, out.texts)}
            batched_out = (branches, out)
        else:
            options = dict(common, parallel=method != "sequential")
            if method != "sequential":
                options["merge"] = "reuse" if method == "pbd_reuse" else "recompute"
            with PeakRSS() as mem, ForwardTimer(decoder.model) as fwd:
                t0 = time.perf_counter()
                result = decoder.generate(messages, **options)
                seconds = time.perf_counter() - t0
            row = _record(task, mode, method, seconds, mem, kv_per_token)
            _pbd_fields(row, result, kv_per_token)
            results[method] = result
            steps = _steps_of(result)
        row["forward_seconds"] = round(fwd.seconds, 6)
        row["loop_seconds"] = round(row["wall_seconds"] - fwd.seconds, 6)  # everything but model.forward
        row["quality"] = score(task, steps)
        rows[method] = row
    return [rows[m] for m in methods if m in rows], _checks(task, mode, rows, results, batched_out)


def _checks(task: Task, mode: str, rows: dict, results: dict, batched_out) -> dict[str, Any]:
    """Which methods decoded the same branches, and how close the others came."""
    check: dict[str, Any] = {"task": task.id, "family": task.family, "size": task.size, "mode": mode}
    reuse, recompute = results.get("pbd_reuse"), results.get("pbd_recompute")
    if reuse is not None and recompute is not None:
        a, b = reuse.branches, recompute.branches
        check["reuse_recompute_branches_identical"] = (
            len(a) == len(b) and all(x.token_ids == y.token_ids for x, y in zip(a, b)))
    if batched_out is not None:
        branches, out = batched_out
        same = [b.token_ids == ids for b, ids in zip(branches, out.token_ids)]
        check["batched_pbd_branches_identical"] = sum(same)
        check["batched_pbd_branches_total"] = len(same)
    seq = rows.get("sequential")
    if seq is not None:
        seq_steps = {b["title"]: b["text"] for b in seq["branches"]} or split_steps(seq["text"])[0]
        for method in ("pbd_reuse", "pbd_recompute", "batched"):
            other = rows.get(method)
            if other is None or not other["branches"]:
                continue
            sims = [_similarity(b["text"], seq_steps[b["title"]]) for b in other["branches"] if b["title"] in seq_steps]
            check[f"{method}_vs_sequential_agreement"] = round(statistics.fmean(sims), 4) if sims else 0.0
    return check


def warm_up(decoder) -> None:
    """One short untimed decode through every code path, so first-call costs stay out of the timings."""
    messages = [{"role": "user", "content": "Compare tea and coffee."}]
    result = decoder.generate(messages, branches=["Tea", "Coffee"], max_new_tokens=12, max_branch_tokens=4)
    decoder.generate(messages, branches=["Tea", "Coffee"], max_new_tokens=12, max_branch_tokens=4, merge="recompute")
    decoder.generate(messages, max_new_tokens=8, parallel=False)
    batched_expand(decoder.model, decoder.tokenizer, [b.context_ids for b in result.branches], max_new_tokens=4)


def run_bench(
    decoder,
    tasks: list[Task],
    *,
    modes: tuple[str, ...] | list[str] = MODES,
    methods: tuple[str, ...] | list[str] = METHODS,
    step_cost: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every task in every mode with every method. Returns ``{"runs", "checks", "summary"}``."""
    warm_up(decoder)
    runs, checks = [], []
    index = 0
    for task in tasks:
        for mode in modes:
            task_rows, check = run_task(decoder, task, mode, index, methods=methods)
            runs.extend(task_rows)
            checks.append(check)
            index += 1
            if progress is not None:
                progress(f"{task.id} {mode}")
    return {"runs": runs, "checks": checks, "summary": summarize(runs, checks, step_cost)}


# --------------------------------------------------------------------------- summary


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 3) if den else None


def summarize(runs: list[dict], checks: list[dict], step_cost: dict | None) -> dict[str, Any]:
    """Per (mode, size, method) and per (mode, method) totals, speed-ups, quality, and the goals."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["size"], r["method"]), []).append(r)
        groups.setdefault((r["mode"], "all", r["method"]), []).append(r)
    table = []
    for (mode, size, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]).zfill(4), METHODS.index(kv[0][2]))):
        task_ids = {r["task"] for r in rs}
        seq = [r for r in groups.get((mode, size, "sequential"), []) if r["task"] in task_ids]
        bat = [r for r in groups.get((mode, size, "batched"), []) if r["task"] in task_ids]
        wall = sum(r["wall_seconds"] for r in rs)
        row = {
            "mode": mode, "size": size, "method": method, "tasks": len(rs),
            "wall_seconds": round(wall, 4),
            "forward_seconds": round(sum(r.get("forward_seconds", 0.0) for r in rs), 4),
            "loop_seconds": round(sum(r.get("loop_seconds", 0.0) for r in rs), 4),
            "generated_tokens": sum(r["generated_tokens"] for r in rs),
            "tokens_per_second": round(sum(r["generated_tokens"] for r in rs) / wall, 3) if wall else 0.0,
            "forward_passes": sum(r["forward_passes"] for r in rs),
            "tokens_per_forward_pass": _ratio(sum(r["generated_tokens"] for r in rs), sum(r["forward_passes"] for r in rs)),
            "kv_tokens_mean": round(statistics.fmean(r["kv_tokens"] for r in rs), 1),
            "kv_bytes_mean": round(statistics.fmean(r["kv_bytes"] for r in rs)),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            "stage_seconds": {
                stage: round(sum((r.get("stats") or r).get("stage_seconds", {}).get(stage, 0.0) for r in rs), 4)
                for stage in ("plan", "parallel", "merge")
            },
        }
        # Speed-ups compare the same tasks only (batched is missing where no plan was found).
        same = {r["task"] for r in rs}
        seq_same = [r for r in seq if r["task"] in same]
        row["speedup_vs_sequential"] = (
            _ratio(sum(r["wall_seconds"] for r in seq_same), wall) if len(seq_same) == len(rs) else None)
        bat_tasks = {r["task"] for r in bat}
        if bat_tasks and method != "batched":
            mine = sum(r["wall_seconds"] for r in rs if r["task"] in bat_tasks)
            row["speedup_vs_batched"] = _ratio(sum(r["wall_seconds"] for r in bat), mine)
        scored = [r["quality"] for r in rs if r["quality"]["kind"] == "exact_match"]
        if scored:
            row["accuracy"] = round(sum(q["correct"] for q in scored) / sum(q["total"] for q in scored), 4)
            row["exact_answers"] = sum(q["exact"] for q in scored)
            row["value_accuracy"] = round(sum(q.get("values_correct", 0) for q in scored) / sum(q["total"] for q in scored), 4)
            row["scored_tasks"] = len(scored)
        par = [r for r in rs if r["method"].startswith("pbd") and r.get("parallel_ms_per_pass")]
        if par and step_cost:
            passes = sum(r["stats"]["stage_forward_passes"]["parallel"] for r in par)
            tokens = sum(r["stats"]["stage_tokens"]["parallel"] for r in par)
            seconds = sum(r["stats"]["stage_seconds"]["parallel"] for r in par)
            k_eff = tokens / passes
            measured_ms = 1000 * seconds / passes
            row["parallel_live_branches"] = round(k_eff, 3)
            row["parallel_ms_per_pass"] = round(measured_ms, 3)
            row["parallel_speedup"] = round(tokens / seconds * cost_at(step_cost, 1) / 1000, 3)
            row["parallel_ceiling"] = round(ceiling_at(step_cost, k_eff), 3)
            row["parallel_efficiency"] = round(cost_at(step_cost, k_eff) / measured_ms, 4)
        table.append(row)
    return {"table": table, "goals": goals(table, checks)}


def _find(table, mode, size, method):
    for row in table:
        if row["mode"] == mode and row["size"] == size and row["method"] == method:
            return row
    return None


def goals(table: list[dict], checks: list[dict]) -> list[dict]:
    """The DESIGN.md section 5 goals that these runs can judge: target, measured value, met or not."""
    out = []
    for k, target in ((8, 0.90), (16, 0.85)):
        row = _find(table, "given", k, "pbd_reuse")
        if row and "parallel_efficiency" in row:
            out.append({"goal": f"parallel stage at k={k} within {int(target * 100)}% of the step-cost ceiling",
                        "target": target, "measured": row["parallel_efficiency"], "met": row["parallel_efficiency"] >= target,
                        "detail": f"{row['parallel_speedup']}x over one-token steps at {row['parallel_live_branches']} live branches per pass; ceiling {row['parallel_ceiling']}x"})
    for mode, target in (("given", 6.0), ("planned", 2.0)):
        for method in ("pbd_reuse", "pbd_recompute"):
            rows = [r for r in table if r["mode"] == mode and r["method"] == method and r["size"] != "all" and r["size"] >= 8]
            if not rows or any(r["speedup_vs_sequential"] is None for r in rows):
                continue
            worst = min(r["speedup_vs_sequential"] for r in rows)
            out.append({"goal": f"{mode} branches, {method}: end-to-end >= {target}x over sequential on tasks with >= 8 steps",
                        "target": target, "measured": worst, "met": worst >= target,
                        "detail": ", ".join(f"N={r['size']}: {r['speedup_vs_sequential']}x" for r in rows)})
    for mode in ("given", "planned"):
        seq = _find(table, mode, "all", "sequential")
        for method in ("pbd_reuse", "pbd_recompute"):
            row = _find(table, mode, "all", method)
            for metric, label in (("accuracy", "exact-match accuracy"), ("value_accuracy", "stated values right")):
                if seq and row and metric in seq and metric in row:
                    out.append({"goal": f"{mode} branches, {method}: quality no worse than sequential ({label})",
                                "target": seq[metric], "measured": row[metric], "met": row[metric] >= seq[metric],
                                "detail": f"sequential {seq[metric]}, {method} {row[metric]}"})
        bat = _find(table, mode, "all", "batched")
        row = _find(table, mode, "all", "pbd_reuse")
        if bat and row:
            out.append({"goal": f"{mode} branches: KV cache below batched", "target": bat["kv_bytes_mean"],
                        "measured": row["kv_bytes_mean"], "met": row["kv_bytes_mean"] < bat["kv_bytes_mean"],
                        "detail": f"mean KV tokens: pbd_reuse {row['kv_tokens_mean']}, batched {bat['kv_tokens_mean']}"})
    return out
