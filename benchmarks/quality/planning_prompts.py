"""Which system text makes a model plan where a prompt splits, and only there? (issue 11, planning)

    python benchmarks/quality/planning_prompts.py --model qwen2.5-coder-0.5b [--limit 40] [--prompts shipped conditional]

Each candidate system text is added to the system message exactly as the adapters add their planning
instructions by default (`pbd_integrations.chat.inject_system_text`), then every parallelizable task of
the quality suite (first ``--limit``) and every single prompt is asked through
``ChatParallelBranch(model=..., temperature=0, plan_instructions=False)`` with that system message,
greedy, ``max_tokens=64`` (a plan comes first; a title list cut short is still a plan). A prompt counts as
planned when the engine decoded a parallel block (``response_metadata["parallel"]``). Printed per
candidate: the planning rate on parallelizable prompts (want high) and on single prompts (want low), and
how many plans had as many titles as the task has steps. Answers whose largest block has two or more branches
are counted apart: a block of one branch decodes exactly as plain text would, so nothing runs in parallel.
Also counted: answers whose readable text shows the format (``####`` or ``%%%%``) and answers that copy the
candidate's own example (a title or sentence of it, `copies_example`). ``--json`` keeps every answer.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tasks as T  # noqa: E402
from pbd_core.plan_format import CLOSE_MARKER, STEP_MARKER  # noqa: E402
from pbd_integrations.prompts import PLANNING_SYSTEM_PROMPT  # noqa: E402


def candidates() -> dict[str, str]:
    """The system texts compared: the shipped ones first, then drafts."""
    from pbd_integrations import prompts

    out = {"shipped-parallel": prompts.PARALLEL_SYSTEM_PROMPT}
    if hasattr(prompts, "PLANNING_SYSTEM_PROMPT"):
        out["planning-default"] = prompts.PLANNING_SYSTEM_PROMPT
    out.update({name: text for name, text in DRAFTS.items() if text not in out.values()})
    return out


_FRUIT_EXAMPLE = (
    "Which of these are fruits: apple, carrot?\n"
    "####Apple: An apple is a fruit.\n"
    "####Carrot: A carrot is a vegetable.\n"
    "####%%%%\n"
    "The apple is a fruit; the carrot is not.\n"
)
_NUMBERS_EXAMPLE = (
    "Which of these numbers are even: 14, 9?\n"
    "####14: 14 = 2 × 7, so 14 is even.\n"
    "####9: 9 is not a multiple of 2, so 9 is odd.\n"
    "####%%%%\n"
    "Only 14 is even.\n"
)
_RECORDS_EXAMPLE = (
    "Prices: pen 2 dollars, book 9 dollars. Which items cost more than 5 dollars?\n"
    "####Pen: The pen costs 2 dollars, not more than 5.\n"
    "####Book: The book costs 9 dollars, more than 5.\n"
    "####%%%%\n"
    "Only the book costs more than 5 dollars.\n"
)
_MULTIPLICATION_EXAMPLE = "What is 12 times 3?\n12 times 3 is 36."
_WORD_PROBLEM_EXAMPLE = "A box holds 6 cups. How many cups do 4 boxes hold?\n4 boxes hold 4 × 6 = 24 cups."


def _with_examples(parts: str = _FRUIT_EXAMPLE, single: str = _MULTIPLICATION_EXAMPLE) -> str:
    """The previous planning instructions with other examples (of a request with parts, of a single one)."""
    return PREVIOUS_PLANNING_PROMPT.replace(_FRUIT_EXAMPLE, parts, 1).replace(_MULTIPLICATION_EXAMPLE, single, 1)


PREVIOUS_PLANNING_PROMPT = PLANNING_SYSTEM_PROMPT.replace(_WORD_PROBLEM_EXAMPLE, _MULTIPLICATION_EXAMPLE, 1)
"""The planning instructions as shipped until git 07b5d2c (a multiplication as the single-request example):
the drafts below are each one change of this text, as they were measured."""

DRAFTS: dict[str, str] = {
    "previous-planning-default": PREVIOUS_PLANNING_PROMPT,
    # The shipped text with one change each (so they follow it): a sentence on formats the request asks
    # for, or an example whose request asks for "Answer:" lines.
    "format-inside": PREVIOUS_PLANNING_PROMPT.replace(
        "If the request is one question",
        "A format the request asks for (such as an 'Answer:' line for each part) goes inside each step, after "
        "its title. If the request is one question",
        1,
    ),
    "format-example": (
        PREVIOUS_PLANNING_PROMPT.replace(
            "Which of these are fruits: apple, carrot?\n",
            "Which of these are fruits: apple, carrot? End each part with 'Answer: yes' or 'Answer: no'.\n",
            1,
        )
        .replace("An apple is a fruit.\n", "An apple is a fruit. Answer: yes\n", 1)
        .replace("A carrot is a vegetable.\n", "A carrot is a vegetable. Answer: no\n", 1)
    ),
    "examples3": (
        "Answer in steps only when the request asks for the same kind of work on several separate things "
        "(each of several items, records, options or questions). Then write each thing as a step: '####', a "
        "short title that names it, ':', then the step; after the last step write '####%%%%' and the "
        "conclusion. Anything else is one request: answer it directly, without '####'. One question, one "
        "calculation, a word problem (its numbers depend on each other), a poem, a rewrite and an explanation "
        "are each one request.\n"
        "Example (several separate things):\n"
        "Which of these are fruits: apple, carrot?\n"
        "####Apple: An apple is a fruit.\n"
        "####Carrot: A carrot is a vegetable.\n"
        "####%%%%\n"
        "The apple is a fruit; the carrot is not.\n"
        "Example (one request):\n"
        "A car drives 60 km per hour for 2 hours. How far does it go?\n"
        "It goes 60 × 2 = 120 km.\n"
        "Example (one request):\n"
        "Write a short poem about rain.\n"
        "Soft rain on the roof,\nthe garden drinks slowly,\nthe day turns to green."
    ),
    "direct-first": (
        "Answer directly. Only when the request asks for the same kind of work on several separate things "
        "(each of several items, records, options or questions) answer in steps instead: write each thing as "
        "a step, '####', a short title that names it, ':', then the step; after the last step write "
        "'####%%%%' and the conclusion. One question, one calculation, a word problem (its numbers depend on "
        "each other), a poem, a rewrite or an explanation is answered directly, without '####'.\n"
        "Example (several separate things):\n"
        "Which of these are fruits: apple, carrot?\n"
        "####Apple: An apple is a fruit.\n"
        "####Carrot: A carrot is a vegetable.\n"
        "####%%%%\n"
        "The apple is a fruit; the carrot is not.\n"
        "Example (answered directly):\n"
        "A car drives 60 km per hour for 2 hours. How far does it go?\n"
        "It goes 60 × 2 = 120 km."
    ),
    # The shipped text with other examples: Qwen2.5-Coder-0.5B copied the fruit example into 5 of 76 answers
    # (titles "Apple"/"Carrot", steps "An apple is a fruit.") and planned word problems as "Box 1".."Box 16".
    "example-numbers": _with_examples(parts=_NUMBERS_EXAMPLE),
    "example-records": _with_examples(parts=_RECORDS_EXAMPLE),
    "example-word-problem": _with_examples(single=_WORD_PROBLEM_EXAMPLE),
    "example-two-singles": _with_examples(single=_MULTIPLICATION_EXAMPLE + "\n" + _WORD_PROBLEM_EXAMPLE).replace(
        "Example of a single request:", "Examples of single requests:", 1
    ),
    "example-numbers-word-problem": _with_examples(parts=_NUMBERS_EXAMPLE, single=_WORD_PROBLEM_EXAMPLE),
    "example-records-word-problem": _with_examples(parts=_RECORDS_EXAMPLE, single=_WORD_PROBLEM_EXAMPLE),
    "conditional-short": (
        "Only when the request lists several separate items, questions or options to handle one by one, "
        "answer in steps: for each one write '####<its name>: <the step>', then '####%%%%' and the conclusion. "
        "For anything else (one question, a calculation, a poem, a rewrite, an explanation) answer normally "
        "and never write '####'.\n"
        "Example: for \"Which of these are fruits: apple, carrot?\" answer\n"
        "####Apple: An apple is a fruit.\n"
        "####Carrot: A carrot is a vegetable.\n"
        "####%%%%\n"
        "The apple is a fruit; the carrot is not."
    ),
}


def example_phrases(system: str) -> list[str]:
    """The example's own words a copying model repeats: each ``####title: body`` line's title and body,
    and the direct example's answer (the line after the last request line ending in ``?``)."""
    phrases: list[str] = []
    lines = system.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(STEP_MARKER) and not line.startswith(CLOSE_MARKER):
            title, _, body = line[len(STEP_MARKER) :].partition(":")
            phrases += [title.strip(), body.strip()]
        elif line.endswith("?") and i + 1 < len(lines) and not lines[i + 1].startswith(STEP_MARKER):
            phrases.append(lines[i + 1].strip())
    return [p for p in phrases if len(p) >= 4]


def copies_example(answer: dict[str, Any], phrases: list[str]) -> bool:
    """Whether an answer repeats the example: a title equal to an example title, or an example sentence."""
    titles = {t.strip().lower() for t in answer["titles"]}
    content = answer["content"].lower()
    return any(p.lower() in titles or (" " in p and p.lower() in content) for p in phrases)


ENGINE_OPTIONS: dict[str, Any] = {}
"""Engine options set with ``--set name=value`` (e.g. ``descriptive_titles=true``), passed to every request."""


def ask(llm: Any, system: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    message = llm.invoke([("system", system), ("human", prompt)], max_tokens=max_tokens, max_branch_tokens=24,
                         **ENGINE_OPTIONS)
    meta = message.response_metadata
    branches = meta.get("branches") or []
    return {"planned": bool(meta.get("parallel")), "titles": [b["title"] for b in branches],
            "largest_block": max(Counter(b["block"] for b in branches).values(), default=0),
            "content": message.content}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--limit", type=int, default=40, help="first N parallelizable tasks (kinds interleave)")
    parser.add_argument("--single-limit", type=int, default=None)
    parser.add_argument("--prompts", nargs="+", default=None, help="candidate names (default: all)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="engine_options",
                        help="an engine option for every request (JSON value); repeatable")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for item in args.engine_options:
        name, _, value = item.partition("=")
        ENGINE_OPTIONS[name] = json.loads(value)

    import torch

    torch.set_num_threads(args.threads)
    from pbd_integrations import ChatParallelBranch
    from pbd_integrations.registry import get_decoder

    data = T.load(T.task_file(T.DEFAULT_SEED))
    par, single = data["parallel"][: args.limit], data["single"][: args.single_limit]
    decoder = get_decoder(args.model)
    llm = ChatParallelBranch(model=decoder, temperature=0.0, plan_instructions=False)
    from run import machine_info, utc_now  # the quality suite's header: commit, CPU flags, load

    report: dict[str, Any] = {"command": "python benchmarks/quality/planning_prompts.py "
                              + " ".join(argv if argv is not None else sys.argv[1:]),
                              "started": utc_now(), "machine": machine_info(), "model": decoder.model_name,
                              "max_tokens": args.max_tokens, "engine_options": ENGINE_OPTIONS, "candidates": {}}
    for name, system in candidates().items():
        if args.prompts and name not in args.prompts:
            continue
        t0 = time.perf_counter()
        items = [(t, True) for t in par] + [(t, False) for t in single]
        with ThreadPoolExecutor(args.workers) as pool:
            answers = list(pool.map(lambda item: ask(llm, system, item[0]["prompt"], args.max_tokens), items))
        rows = [{"id": t["id"], "parallelizable": p, "steps": len(t["steps"]) if p else 0, **a}
                for (t, p), a in zip(items, answers)]
        p_rows, s_rows = [r for r in rows if r["parallelizable"]], [r for r in rows if not r["parallelizable"]]
        planned_p = sum(r["planned"] for r in p_rows)
        planned_s = sum(r["planned"] for r in s_rows)
        exact = sum(r["planned"] and len(r["titles"]) == r["steps"] for r in p_rows)
        multi_p = sum(r["largest_block"] >= 2 for r in p_rows)
        multi_s = sum(r["largest_block"] >= 2 for r in s_rows)
        shown = sum("####" in r["content"] or "%%%%" in r["content"] for r in rows)  # the format leaked
        phrases = example_phrases(system)
        copied = sum(copies_example(r, phrases) for r in rows)
        summary = {"parallelizable": f"{planned_p}/{len(p_rows)}", "single": f"{planned_s}/{len(s_rows)}",
                   "answers_showing_markers": f"{shown}/{len(rows)}",
                   "answers_copying_the_example": f"{copied}/{len(rows)}",
                   "parallelizable_two_or_more": f"{multi_p}/{len(p_rows)}", "single_two_or_more": f"{multi_s}/{len(s_rows)}",
                   "plans_with_the_right_step_count": exact, "seconds": round(time.perf_counter() - t0, 1)}
        report["candidates"][name] = {"system": system, "summary": summary, "rows": rows}
        print(f"{decoder.model_name} [{name}]: planned {summary['parallelizable']} parallelizable, "
              f"{summary['single']} single (with 2 or more branches: {multi_p} and {multi_s}); {exact} plans with "
              f"the task's step count; {shown} answers show '####' or '%%%%', {copied} copy the example "
              f"({summary['seconds']} s)",
              flush=True)
        for r in s_rows:
            if r["planned"]:
                print(f"    single planned: {r['id']} -> {r['titles'][:6]}")
    report["finished"] = utc_now()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
