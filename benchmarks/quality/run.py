"""Answer quality of parallel-branch decoding against sequential decoding, and how often models plan.

    python benchmarks/quality/run.py --model default
    python benchmarks/quality/run.py --model qwen2.5-coder-0.5b --limit 40

Greedy, on the shipped tasks (``tasks/seed-<seed>.json``, see ``tasks.py``), one decoder shared by a pool
of worker threads (concurrent requests are batched into shared forward passes):

1. **Timing, alone** (``--timing N`` tasks, main thread, nothing else running in the process): each task
   decoded with caller-given branches sequentially (``parallel=False``) and in parallel, in alternating
   order: clean end-to-end seconds per request.
2. **Caller-given branches** (every parallelizable task): all sequential answers (one pool phase), then all
   parallel answers (another); per-step accuracy of each from the step texts (``score.py``), with Wilson
   and task-level bootstrap 95% intervals, the paired difference, and the wall time of each phase.
3. **Self-planned** (every parallelizable and every single prompt): `ChatParallelBranch` on the
   decoder, default path, the prompt as the only user message (``plain``) and with the shipped
   ``PARALLEL_SYSTEM_PROMPT`` as system message (``system``); whether it planned a parallel block is
   ``response_metadata["parallel"]`` (with ``response_metadata["branches"]`` the planned titles).

Writes ``--out`` (JSON: machine, settings, summary, every answer) and a markdown summary next to it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from collections import Counter
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import score as S  # noqa: E402
import tasks as T  # noqa: E402

SCHEMA = "pbd-quality/1"
REPO = HERE.parents[1]


# --------------------------------------------------------------------------- machine


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, flags


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def utc_now() -> str:
    """The time a run starts or ends, as the results files write it."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_info() -> dict[str, Any]:
    import torch

    cpu, flags = _cpuinfo()
    status = _git("status", "--porcelain", "--", "core", "pbd_integrations", "benchmarks/quality")
    try:
        import pbd_core

        engine_path = str(Path(pbd_core.__file__).resolve().parent)
    except Exception:  # pragma: no cover
        engine_path = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags_vector": sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sse4_2")),
        "cpu_flags": flags,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status),
        "engine_path": engine_path,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- one request


LIST_STEPS_IN_PROMPT = False
"""``--list-steps``: a lever measured and not shipped (an ordering cue for branches, as sequential steps
have): the task's step titles follow its prompt as a plain list, ``Steps:`` then ``- <title>`` lines."""


def given_messages(task: dict) -> list[dict[str, str]]:
    """What both caller-given runs see: the shipped system prompt and the task (as ``pbd bench`` does)."""
    from pbd_integrations.prompts import PARALLEL_SYSTEM_PROMPT

    prompt = task["prompt"]
    if LIST_STEPS_IN_PROMPT:
        prompt += "\n\nSteps:\n" + "\n".join(f"- {step['title']}" for step in task["steps"])
    return [{"role": "system", "content": PARALLEL_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


ENGINE_OPTIONS: dict[str, Any] = {}
"""Engine options set with ``--set name=value``, passed to every request of every phase."""


def run_given(decoder, task: dict, parallel: bool) -> dict[str, Any]:
    titles = [s["title"] for s in task["steps"]]
    t0 = time.perf_counter()
    result = decoder.generate(
        given_messages(task), branches=titles, parallel=parallel, temperature=0.0,
        max_new_tokens=task["max_new_tokens"], max_branch_tokens=task["max_branch_tokens"],
        max_branches=max(16, len(titles)), **ENGINE_OPTIONS,
    )
    seconds = time.perf_counter() - t0
    raw = S.raw_text(result)
    bodies, source = S.steps_of_result(result, titles)
    stats = result.stats.as_dict()
    return {
        "seconds": round(seconds, 4),
        "generated_tokens": stats["generated_tokens"],
        "forward_passes": stats["forward_passes"],
        "stage_tokens": stats["stage_tokens"],
        "stage_seconds": stats["stage_seconds"],
        "parallel": bool(result.parallel),
        "finish_reason": result.finish_reason,
        "step_source": source,
        "score": S.score_task(task, bodies, S.conclusion_of(raw)),
        "branch_finish": [b.finish_reason for b in result.branches],
        "bodies": bodies,
        "raw_text": raw,
    }


def run_planned(llm, task: dict, system: bool, max_tokens: int) -> dict[str, Any]:
    from pbd_integrations.prompts import PARALLEL_SYSTEM_PROMPT

    prompt: Any = [("system", PARALLEL_SYSTEM_PROMPT), ("human", task["prompt"])] if system else task["prompt"]
    t0 = time.perf_counter()
    message = llm.invoke(prompt, max_tokens=max_tokens, max_branch_tokens=task["max_branch_tokens"], **ENGINE_OPTIONS)
    seconds = time.perf_counter() - t0
    meta = message.response_metadata
    branches = meta.get("branches") or []
    out = {
        "seconds": round(seconds, 4),
        "planned": bool(meta.get("parallel")),
        "n_branches": len(branches),
        "largest_block": max(Counter(b["block"] for b in branches).values(), default=0),
        "titles": [b["title"] for b in branches],
        "generated_tokens": (meta.get("stats") or {}).get("generated_tokens"),
        "finish_reason": meta.get("pbd_finish_reason"),
        "content": message.content if isinstance(message.content, str) else str(message.content),
    }
    answer = task.get("answer")
    if answer:  # single prompts with a number to give
        value = S.parse_value(out["content"], answer["type"])
        out["answer_value"], out["answer_correct"] = value, S.is_correct(value, answer["answer"], answer["type"])
    return out


def run_selfplanned(decoder, task: dict, parallel: bool) -> dict[str, Any]:
    """The default path's prompt (the adapters' planning instructions as the system message), the model
    plans for itself; ``parallel=False`` decodes the same prompt plainly. Steps are read from the planned
    branches (plain decoding: the ``####`` sections it wrote), matched to the task's steps by title words."""
    from pbd_integrations.prompts import PLANNING_SYSTEM_PROMPT

    messages = [{"role": "system", "content": PLANNING_SYSTEM_PROMPT}, {"role": "user", "content": task["prompt"]}]
    t0 = time.perf_counter()
    result = decoder.generate(messages, parallel=parallel, temperature=0.0, max_new_tokens=task["max_new_tokens"],
                              max_branch_tokens=task["max_branch_tokens"], **ENGINE_OPTIONS)
    seconds = time.perf_counter() - t0
    raw = S.raw_text(result)
    branches = [(b.title, b.text) for b in result.branches]
    bodies = S.match_planned_steps(task["steps"], branches)
    # Steps side by side: in parallel, a block of two or more branches; in plain decoding, two or more sections.
    largest_block = max(Counter(b.block for b in result.branches).values(), default=0)
    return {
        "seconds": round(seconds, 4),
        "generated_tokens": result.stats.generated_tokens,
        "planned": largest_block >= 2,
        "n_branches": len(branches),
        "titles": [t for t, _ in branches],
        "bodies": bodies,
        "score": S.score_task(task, bodies, S.conclusion_of(raw)),
        "raw_text": raw,
    }


# --------------------------------------------------------------------------- phases


def pool_phase(name: str, jobs: list[Callable[[], dict]], workers: int) -> tuple[list[dict], float]:
    """Run ``jobs`` on ``workers`` threads (their decodes batch); results in job order and the wall time."""
    done = [0]
    lock = threading.Lock()
    t0 = time.perf_counter()

    def wrap(job: Callable[[], dict]) -> dict:
        out = job()
        with lock:
            done[0] += 1
            if done[0] % 10 == 0 or done[0] == len(jobs):
                print(f"  [{name}] {done[0]}/{len(jobs)}  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        return out

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(wrap, jobs))
    return results, time.perf_counter() - t0


# --------------------------------------------------------------------------- summary


def _accuracy(rows: list[dict], key: str) -> dict[str, Any]:
    pairs = [(r[key]["score"]["n_correct"], r[key]["score"]["n_steps"]) for r in rows]
    k, n = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    (lo, hi), = S.cluster_bootstrap([pairs])
    out = S.proportion(k, n)
    out["bootstrap95"] = [round(lo, 4), round(hi, 4)]
    out["tasks_all_correct"] = sum(p[0] == p[1] for p in pairs)
    out["steps_found"] = sum(r[key]["score"]["found"] for r in rows)
    out["steps_empty"] = sum(not (b or "").strip() for r in rows for b in r[key]["bodies"])
    out["steps_unreadable"] = sum(v is None for r in rows for v in r[key]["score"]["values"])
    return out


def _by(rows: list[dict], field: Callable[[dict], str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(field(r), []).append(r)
    return groups


def _step_accuracy_by_type(rows: list[dict], key: str) -> dict[str, Any]:
    counts: dict[str, list[int]] = {}
    for r in rows:
        for step, ok in zip(r["steps"], r[key]["score"]["correct"]):
            c = counts.setdefault(step["type"], [0, 0])
            c[0] += ok
            c[1] += 1
    return {t: S.proportion(k, n) for t, (k, n) in sorted(counts.items())}


def summarize(rows: list[dict], singles: list[dict], timing: list[dict], phases: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = [r for r in rows if "seq" in r and "par" in r]
    if given:
        seq_pairs = [(r["seq"]["score"]["n_correct"], r["seq"]["score"]["n_steps"]) for r in given]
        par_pairs = [(r["par"]["score"]["n_correct"], r["par"]["score"]["n_steps"]) for r in given]
        diff, (dlo, dhi) = S.paired_difference(seq_pairs, par_pairs)
        same_value = same_ok = total = 0
        for r in given:
            for a, b, x, y in zip(r["seq"]["score"]["values"], r["par"]["score"]["values"],
                                  r["seq"]["score"]["correct"], r["par"]["score"]["correct"]):
                total += 1
                same_value += a == b
                same_ok += x == y
        finals = [r for r in given if r.get("final")]
        out["given"] = {
            "tasks": len(given),
            "steps": sum(p[1] for p in seq_pairs),
            "sequential": _accuracy(given, "seq"),
            "parallel": _accuracy(given, "par"),
            "parallel_minus_sequential": {"diff": round(diff, 4), "bootstrap95": [round(dlo, 4), round(dhi, 4)]},
            "steps_same_value": S.proportion(same_value, total),
            "steps_same_correctness": S.proportion(same_ok, total),
            "by_kind": {
                kind: {"tasks": len(g), "sequential": _accuracy(g, "seq"), "parallel": _accuracy(g, "par")}
                for kind, g in _by(given, lambda r: r["kind"]).items()
            },
            "by_answer_type": {"sequential": _step_accuracy_by_type(given, "seq"),
                               "parallel": _step_accuracy_by_type(given, "par")},
            "conclusion_names_cheapest": {
                "sequential": S.proportion(sum(bool(r["seq"]["score"].get("final_correct")) for r in finals), len(finals)),
                "parallel": S.proportion(sum(bool(r["par"]["score"].get("final_correct")) for r in finals), len(finals)),
            },
            "generated_tokens": {"sequential": sum(r["seq"]["generated_tokens"] for r in given),
                                 "parallel": sum(r["par"]["generated_tokens"] for r in given)},
            "branches_cut_by_budget": {
                "sequential": sum(f == "length" for r in given for f in r["seq"]["branch_finish"]),
                "parallel": sum(f == "length" for r in given for f in r["par"]["branch_finish"]),
            },
            "batched_phase_seconds": {"sequential": round(phases.get("given_seq", 0.0), 2),
                                      "parallel": round(phases.get("given_par", 0.0), 2)},
            "batched_median_request_seconds": {
                "sequential": round(statistics.median(r["seq"]["seconds"] for r in given), 3),
                "parallel": round(statistics.median(r["par"]["seconds"] for r in given), 3),
            },
        }
    if timing:
        seq_s = [t["seq_seconds"] for t in timing]
        par_s = [t["par_seconds"] for t in timing]
        out["timing_alone"] = {
            "tasks": len(timing),
            "sequential_seconds_total": round(sum(seq_s), 3),
            "parallel_seconds_total": round(sum(par_s), 3),
            "speedup_of_totals": round(sum(seq_s) / sum(par_s), 3) if sum(par_s) else None,
            "speedup_median": round(statistics.median(a / b for a, b in zip(seq_s, par_s)), 3),
            "sequential_tokens_per_second": round(sum(t["seq_tokens"] for t in timing) / sum(seq_s), 2),
            "parallel_tokens_per_second": round(sum(t["par_tokens"] for t in timing) / sum(par_s), 2),
        }
    selfplanned = [r for r in rows if "self_seq" in r and "self_par" in r]
    if selfplanned:
        seq_pairs = [(r["self_seq"]["score"]["n_correct"], r["self_seq"]["score"]["n_steps"]) for r in selfplanned]
        par_pairs = [(r["self_par"]["score"]["n_correct"], r["self_par"]["score"]["n_steps"]) for r in selfplanned]
        diff, (dlo, dhi) = S.paired_difference(seq_pairs, par_pairs)
        both = [r for r in selfplanned if r["self_seq"]["planned"] and r["self_par"]["planned"]]
        out["self_planned"] = {
            "tasks": len(selfplanned),
            "sequential": _accuracy(selfplanned, "self_seq"),
            "parallel": _accuracy(selfplanned, "self_par"),
            "parallel_minus_sequential": {"diff": round(diff, 4), "bootstrap95": [round(dlo, 4), round(dhi, 4)]},
            "planned_sequential": sum(r["self_seq"]["planned"] for r in selfplanned),
            "planned_parallel": sum(r["self_par"]["planned"] for r in selfplanned),
            "both_planned": {"tasks": len(both), "sequential": _accuracy(both, "self_seq") if both else None,
                             "parallel": _accuracy(both, "self_par") if both else None},
            "seconds": {"sequential": round(sum(r["self_seq"]["seconds"] for r in selfplanned), 2),
                        "parallel": round(sum(r["self_par"]["seconds"] for r in selfplanned), 2)},
        }
    for mode in ("plain", "system"):
        par_rows = [r for r in rows if mode in r]
        single_rows = [r for r in singles if mode in r]
        if not par_rows and not single_rows:
            continue
        planned_par = [r for r in par_rows if r[mode]["planned"]]
        block: dict[str, Any] = {
            "parallelizable": S.proportion(len(planned_par), len(par_rows)),
            "single": S.proportion(sum(r[mode]["planned"] for r in single_rows), len(single_rows)),
            # A block of one branch decodes exactly as plain text would: nothing runs in parallel.
            "parallelizable_two_or_more_branches": S.proportion(
                sum(r[mode].get("largest_block", 0) >= 2 for r in par_rows), len(par_rows)),
            "single_two_or_more_branches": S.proportion(
                sum(r[mode].get("largest_block", 0) >= 2 for r in single_rows), len(single_rows)),
            "parallelizable_by_kind": {k: S.proportion(sum(r[mode]["planned"] for r in g), len(g))
                                       for k, g in _by(par_rows, lambda r: r["kind"]).items()},
            "single_by_category": {k: S.proportion(sum(r[mode]["planned"] for r in g), len(g))
                                   for k, g in _by(single_rows, lambda r: r["variant"]).items()},
            "planned_branches_mean": round(statistics.fmean(r[mode]["n_branches"] for r in planned_par), 2)
            if planned_par else None,
            "planned_branches_equal_steps": sum(r[mode]["n_branches"] == len(r["steps"]) for r in planned_par),
            # plan quality, from the titles alone (parallelizable and single prompts together)
            "plans": sum(r[mode]["planned"] for r in par_rows + single_rows),
            "plans_with_distinct_titles": sum(len(set(r[mode]["titles"])) == len(r[mode]["titles"])
                                              for r in par_rows + single_rows if r[mode]["planned"]),
            "plans_copying_the_prompt_example": sum(bool({"Apple", "Carrot"} & set(r[mode]["titles"]))
                                                    for r in par_rows + single_rows if r[mode]["planned"]),
        }
        answered = [r for r in single_rows if "answer_correct" in r[mode]]
        if answered:
            block["single_arithmetic_correct"] = S.proportion(sum(r[mode]["answer_correct"] for r in answered),
                                                              len(answered))
        out[f"planned_{mode}"] = block
    return out


def _pct(p: dict, key: str = "wilson95") -> str:
    if not p or p.get("rate") is None:
        return "-"
    lo, hi = p[key]
    return f"{100 * p['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({p['k']}/{p['n']})"


def markdown(doc: dict) -> str:
    m, s, cfg = doc["machine"], doc["summary"], doc["config"]
    lines = [
        f"# Quality: {doc['model']['source']} ({doc['model']['name']}, {doc['model']['dtype']})",
        "",
        f"`{doc['command']}`  ",
        f"{doc['started']} to {doc['finished']}; git {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}; "
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads; "
        f"load average before {m['load_average']}, after {doc['load_average_after']}  ",
        f"CPU vector flags: {' '.join(m['cpu_flags_vector']) or '-'}  ",
        f"Tasks: {cfg['task_file']} (seed {cfg['seed']}), {cfg['parallel_tasks']} parallelizable, "
        f"{cfg['single_tasks']} single; greedy; {cfg['workers']} worker threads.",
        "",
    ]
    g = s.get("given")
    if g:
        lines += [
            f"## Caller-given branches ({g['tasks']} tasks, {g['steps']} steps)",
            "",
            "| | per-step accuracy [Wilson 95%] | task bootstrap 95% | all steps right | batched phase wall | median request (batched) |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in (("sequential", "sequential (`parallel=False`)"), ("parallel", "parallel")):
            a = g[key]
            lines.append(
                f"| {label} | {_pct(a)} | [{100 * a['bootstrap95'][0]:.1f}, {100 * a['bootstrap95'][1]:.1f}] | "
                f"{a['tasks_all_correct']}/{g['tasks']} | {g['batched_phase_seconds'][key]} s | "
                f"{g['batched_median_request_seconds'][key]} s |")
        d = g["parallel_minus_sequential"]
        lines += [
            "",
            f"Parallel minus sequential: {100 * d['diff']:+.1f} points, task bootstrap 95% "
            f"[{100 * d['bootstrap95'][0]:+.1f}, {100 * d['bootstrap95'][1]:+.1f}]. Steps with the same value read "
            f"both ways: {_pct(g['steps_same_value'])}. Conclusion names the cheapest option (compare_options): "
            f"sequential {_pct(g['conclusion_names_cheapest']['sequential'])}, parallel "
            f"{_pct(g['conclusion_names_cheapest']['parallel'])}. Steps cut by the {cfg['branch_tokens']}-token "
            f"step budget: sequential {g['branches_cut_by_budget']['sequential']}, parallel "
            f"{g['branches_cut_by_budget']['parallel']}. Empty steps (the model ended the step at once): sequential "
            f"{g['sequential']['steps_empty']}, parallel {g['parallel']['steps_empty']}; steps with no readable value "
            f"(counted wrong): sequential {g['sequential']['steps_unreadable']}, parallel "
            f"{g['parallel']['steps_unreadable']}.",
            "",
            "| kind | tasks | sequential | parallel |",
            "|---|---|---|---|",
        ]
        for kind, b in g["by_kind"].items():
            lines.append(f"| {kind} | {b['tasks']} | {_pct(b['sequential'])} | {_pct(b['parallel'])} |")
        lines += ["", "| answer type | sequential | parallel |", "|---|---|---|"]
        for t in g["by_answer_type"]["sequential"]:
            lines.append(f"| {t} | {_pct(g['by_answer_type']['sequential'][t])} | {_pct(g['by_answer_type']['parallel'][t])} |")
        lines.append("")
    t = s.get("timing_alone")
    if t:
        lines += [
            f"## Speed, one request at a time ({t['tasks']} tasks, caller-given branches)",
            "",
            f"Sequential {t['sequential_seconds_total']} s ({t['sequential_tokens_per_second']} tok/s), parallel "
            f"{t['parallel_seconds_total']} s ({t['parallel_tokens_per_second']} tok/s): speed-up "
            f"{t['speedup_of_totals']}x of the totals, median {t['speedup_median']}x per task.",
            "",
        ]
    sp = s.get("self_planned")
    if sp:
        d = sp["parallel_minus_sequential"]
        lines += [
            f"## Self-planned steps, parallel against plain decoding ({sp['tasks']} tasks)",
            "",
            "The adapters' planning instructions as the system message, the task as the user message, the model "
            "plans for itself; plain decoding (`parallel=False`) of the same prompt is the baseline. The steps "
            "are the planned branches (plain decoding: its `####` sections), matched to the task's steps by "
            "title words; a step with no branch counts as wrong in both modes.",
            "",
            "| | per-step accuracy [Wilson 95%] | task bootstrap 95% | answers with 2+ steps |",
            "|---|---|---|---|",
            f"| plain decoding | {_pct(sp['sequential'])} | [{100 * sp['sequential']['bootstrap95'][0]:.1f}, "
            f"{100 * sp['sequential']['bootstrap95'][1]:.1f}] | {sp['planned_sequential']}/{sp['tasks']} |",
            f"| parallel | {_pct(sp['parallel'])} | [{100 * sp['parallel']['bootstrap95'][0]:.1f}, "
            f"{100 * sp['parallel']['bootstrap95'][1]:.1f}] | {sp['planned_parallel']}/{sp['tasks']} |",
            "",
            f"Parallel minus plain: {100 * d['diff']:+.1f} points [{100 * d['bootstrap95'][0]:+.1f}, "
            f"{100 * d['bootstrap95'][1]:+.1f}]. On the {sp['both_planned']['tasks']} tasks planned both ways: "
            f"plain {_pct(sp['both_planned']['sequential'])}, parallel {_pct(sp['both_planned']['parallel'])}. "
            f"Time (8 at a time): plain {sp['seconds']['sequential']} s, parallel {sp['seconds']['parallel']} s of "
            "summed request time.",
            "",
        ]
    for mode, label in (("plain", "default path (the adapters' planning instructions)"),
                        ("system", "with `PARALLEL_SYSTEM_PROMPT`")):
        p = s.get(f"planned_{mode}")
        if not p:
            continue
        lines += [
            f"## Self-planned, {label} (`ChatParallelBranch`, max_tokens {cfg.get('planned_max_tokens')})",
            "",
            f"Planned a parallel block on parallelizable prompts: {_pct(p['parallelizable'])}; "
            f"on prompts with no parallel structure: {_pct(p['single'])}. Blocks of two or more branches "
            "in one block (a block of one decodes exactly as plain text): "
            f"{_pct(p.get('parallelizable_two_or_more_branches'))} and {_pct(p.get('single_two_or_more_branches'))}. "
            "Mean branches when planned: "
            f"{p['planned_branches_mean']}; as many branches as the task's steps: {p['planned_branches_equal_steps']}. "
            f"Of all {p.get('plans', 0)} plans: {p.get('plans_with_distinct_titles', 0)} with distinct titles, "
            f"{p.get('plans_copying_the_prompt_example', 0)} with a title copied from the system prompt's example "
            "(Apple, Carrot).",
            "",
            "| kind | planned |",
            "|---|---|",
        ]
        for k, v in {**p["parallelizable_by_kind"], **{f"single: {c}": v for c, v in p["single_by_category"].items()}}.items():
            lines.append(f"| {k} | {_pct(v)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def rescore(path: Path) -> int:
    """Re-score a results file's saved step texts (the decoding is not repeated)."""
    doc = json.loads(path.read_text())
    data = T.load(REPO / doc["config"]["task_file"])
    by_id = {t["id"]: t for t in data["parallel"] + data["single"]}
    for row in doc["tasks"]:
        task = by_id[row["id"]]
        for key in ("seq", "par"):
            if key in row:
                row[key]["score"] = S.score_task(task, row[key]["bodies"], S.conclusion_of(row[key]["raw_text"]))
    for row in doc["single"]:
        answer = by_id[row["id"]].get("answer")
        for mode in ("plain", "system"):
            if answer and mode in row:
                value = S.parse_value(row[mode]["content"], answer["type"])
                row[mode]["answer_value"] = value
                row[mode]["answer_correct"] = S.is_correct(value, answer["answer"], answer["type"])
    doc["summary"] = summarize(doc["tasks"], doc["single"], doc["timing_alone"], doc["phases_seconds"])
    doc["rescored"] = utc_now()
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def _slug(source: str) -> str:
    return {"default": "smollm2-135m"}.get(source, Path(source).name.replace("/", "_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default | qwen2.5-coder-0.5b | a folder or .gguf")
    parser.add_argument("--limit", type=int, default=None, help="first N parallelizable tasks (kinds interleave)")
    parser.add_argument("--single-limit", type=int, default=None, help="first N single prompts (default all)")
    parser.add_argument("--tasks", default=None, help="task file (default tasks/seed-<seed>.json)")
    parser.add_argument("--seed", type=int, default=T.DEFAULT_SEED)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timing", type=int, default=8, help="tasks timed one at a time (0: none)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 threads collapsed to 0.6 tok/s "
                             "against 13 tok/s with 1; 0 keeps torch's default)")
    parser.add_argument("--planned-tokens", type=int, default=96,
                        help="max_tokens of the self-planned answers (a plan, if any, comes first; a plan cut short "
                             "is still decoded as a block, so this bounds the cost without hiding plans)")
    parser.add_argument("--phases", nargs="+", default=["timing", "given", "selfplan", "planned"],
                        choices=["timing", "given", "selfplan", "planned"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="engine_options",
                        help="an engine option for every request (JSON value, e.g. --set plan_in_view=true); repeatable")
    parser.add_argument("--list-steps", action="store_true",
                        help="caller-given phases: list the step titles after the task's prompt (a lever)")
    parser.add_argument("--out", default=None, help="results JSON (default results/<model>.json); .md beside it")
    parser.add_argument("--rescore", default=None, metavar="RESULTS_JSON",
                        help="no decoding: re-score the saved step texts of a results file with the current scorer, "
                             "rewrite its summary and markdown")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(Path(args.rescore))

    global LIST_STEPS_IN_PROMPT
    LIST_STEPS_IN_PROMPT = args.list_steps
    for item in args.engine_options:
        name, _, value = item.partition("=")
        try:
            ENGINE_OPTIONS[name] = json.loads(value)
        except json.JSONDecodeError:
            ENGINE_OPTIONS[name] = value
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pbd_core import ParallelBranchDecoder
    from pbd_integrations import ChatParallelBranch

    task_path = Path(args.tasks) if args.tasks else T.task_file(args.seed)
    data = T.load(task_path)
    if args.tasks is None and data != json.loads(T.dumps(T.generate(args.seed))):
        print(f"warning: {task_path} differs from the generator; run python benchmarks/quality/tasks.py", file=sys.stderr)
    par_tasks = data["parallel"][: args.limit]
    singles = data["single"][: args.single_limit]
    out_path = Path(args.out) if args.out else HERE / "results" / f"{_slug(args.model)}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)

    machine = machine_info()
    started = utc_now()
    t_load = time.perf_counter()
    decoder = ParallelBranchDecoder.from_pretrained(args.model, dtype=args.dtype)
    load_seconds = time.perf_counter() - t_load
    param = next(decoder.model.parameters())
    llm = ChatParallelBranch(model=decoder, temperature=0.0)
    machine["torch_threads"] = torch.get_num_threads()

    # warm-up: every path once, untimed
    warm = [{"role": "user", "content": "Compare tea and coffee."}]
    decoder.generate(warm, branches=["Tea", "Coffee"], max_new_tokens=12, max_branch_tokens=4)
    decoder.generate(warm, branches=["Tea", "Coffee"], max_new_tokens=12, max_branch_tokens=4, parallel=False)
    llm.invoke("Say hi.", max_tokens=4)

    rows = [{"id": t["id"], "kind": t["kind"], "variant": t["variant"], "steps": t["steps"], "final": t["final"]}
            for t in par_tasks]
    single_rows = [{"id": t["id"], "kind": "single", "variant": t["variant"]} for t in singles]
    timing: list[dict] = []
    phases: dict[str, float] = {}

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
        "started": started,
        "machine": machine,
        "model": {"source": args.model, "name": getattr(decoder, "model_name", None), "dtype": str(param.dtype).replace("torch.", ""),
                  "parameters": sum(p.numel() for p in decoder.model.parameters()), "load_seconds": round(load_seconds, 2)},
        "config": {"task_file": os.path.relpath(task_path, REPO), "seed": data["seed"],
                   "generator_version": data["generator_version"], "parallel_tasks": len(par_tasks),
                   "single_tasks": len(singles), "workers": args.workers, "timing_tasks": args.timing,
                   "branch_tokens": T.BRANCH_TOKENS, "conclusion_tokens": T.CONCLUSION_TOKENS,
                   "single_tokens": T.SINGLE_TOKENS, "temperature": 0.0, "merge": "engine default",
                   "planned_max_tokens": args.planned_tokens, "engine_options": dict(ENGINE_OPTIONS),
                   "steps_listed_in_prompt": LIST_STEPS_IN_PROMPT,
                   "planned_path": f"ChatParallelBranch(model=decoder, temperature=0).invoke(prompt, "
                                   f"max_tokens={args.planned_tokens}, max_branch_tokens={T.BRANCH_TOKENS}); planned = "
                                   "response_metadata['parallel']"},
        "phases_seconds": phases,
    }

    def save(final: bool = False) -> None:
        doc["finished"] = utc_now()
        doc["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        doc["summary"] = summarize(rows, single_rows, timing, phases)
        doc["timing_alone"] = timing
        doc["tasks"] = rows
        doc["single"] = single_rows
        doc["complete"] = final
        out_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        out_path.with_suffix(".md").write_text(markdown(doc))

    t_all = time.perf_counter()
    if "timing" in args.phases and args.timing:
        print(f"timing {args.timing} tasks one at a time", file=sys.stderr, flush=True)
        for i, task in enumerate(par_tasks[: args.timing]):
            order = [False, True] if i % 2 == 0 else [True, False]
            got = {p: run_given(decoder, task, p) for p in order}
            timing.append({"id": task["id"], "steps": len(task["steps"]),
                           "seq_seconds": got[False]["seconds"], "par_seconds": got[True]["seconds"],
                           "seq_tokens": got[False]["generated_tokens"], "par_tokens": got[True]["generated_tokens"],
                           "seq_correct": got[False]["score"]["n_correct"], "par_correct": got[True]["score"]["n_correct"]})
        save()
    if "given" in args.phases:
        for key, parallel in (("seq", False), ("par", True)):
            results, phases[f"given_{key}"] = pool_phase(
                f"given {key}", [lambda t=t, p=parallel: run_given(decoder, t, p) for t in par_tasks], args.workers)
            for row, r in zip(rows, results):
                row[key] = r
            save()
    if "selfplan" in args.phases:
        for key, parallel in (("self_seq", False), ("self_par", True)):
            results, phases[key] = pool_phase(
                key, [lambda t=t, p=parallel: run_selfplanned(decoder, t, p) for t in par_tasks], args.workers)
            for row, r in zip(rows, results):
                row[key] = r
            save()
    if "planned" in args.phases:
        jobs, targets = [], []
        for mode in ("plain", "system"):
            for row, task in [*zip(rows, par_tasks), *zip(single_rows, singles)]:
                jobs.append(lambda t=task, m=mode: run_planned(llm, t, m == "system", args.planned_tokens))
                targets.append((row, mode))
        results, phases["planned"] = pool_phase("planned", jobs, args.workers)
        for (row, mode), r in zip(targets, results):
            row[mode] = r
    phases["total"] = round(time.perf_counter() - t_all, 2)
    save(final=True)
    print(markdown(doc))
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
