"""Benchmark tasks: generated from a seed, shipped as JSON, scored without a judge model.

Three families, each at several sizes N (the number of independent steps):

- ``retrieval``: N records (students with grades, or products with specs) and a
  criterion. One step per record says ``MATCH`` or ``NO MATCH``; the answer is
  the set of matching records, scored by exact match (and per record).
- ``multi_question``: N independent short questions (arithmetic, unit
  conversions) answered in one reply; scored per question by exact match of
  the number the step states (after its last ``=``, else its first number).
- ``planning``: a plan or comparison with N aspects and no single right
  answer; scored by agreement between the methods' step texts
  (`pbd_integrations.bench.report`).

`generate_tasks` is deterministic in its seed, so ``benchmarks/make_tasks.py``
can rebuild the shipped files and a test can check they were not edited by hand.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FAMILIES: tuple[str, ...] = ("retrieval", "multi_question", "planning")
DEFAULT_SIZES: tuple[int, ...] = (4, 8, 16)
DEFAULT_SEED = 2503  # arXiv 2503.20533

# Token budget of one step, per family: long enough for the step, short enough to run on a CPU.
BRANCH_TOKENS = {"retrieval": 40, "multi_question": 32, "planning": 48}
MERGE_TOKENS = 64  # budget left for the plan and the conclusion on top of the steps

_FIRST_NAMES = [
    "Alice", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jonas",
    "Kemal", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tariq",
    "Uma", "Viktor", "Wen", "Yara", "Zoe", "Amir", "Bea", "Carlos", "Dina", "Erik",
]
_PRODUCTS = [
    "Aster", "Birch", "Cobalt", "Delta", "Ember", "Falcon", "Garnet", "Harbor", "Indigo", "Juniper",
    "Kestrel", "Lumen", "Maple", "Nimbus", "Onyx", "Pebble", "Quartz", "Raven", "Sierra", "Tundra",
    "Umber", "Vega", "Willow", "Xenon", "Yukon", "Zephyr", "Alder", "Basalt", "Cedar", "Dune",
]
_PLANNING = [
    ("Plan a three-day trip to Lisbon.",
     ["Flights", "Hotel", "Breakfast", "Museums", "Beaches", "Nightlife", "Budget", "Packing",
      "Transport", "Weather", "Safety", "Language", "Day trips", "Shopping", "Food markets", "Souvenirs"]),
    ("Compare three ways to learn a new programming language.",
     ["Books", "Video courses", "Small projects", "Pair programming", "Code reviews", "Documentation",
      "Exercises", "Open source", "Cost", "Time needed", "Motivation", "Feedback", "Depth",
      "Speed", "Fun", "Career value"]),
    ("Plan the launch of a small bakery.",
     ["Location", "Menu", "Suppliers", "Staff", "Pricing", "Equipment", "Permits", "Marketing",
      "Opening day", "Opening hours", "Website", "Loyalty card", "Insurance", "Cleaning",
      "Delivery", "Accounting"]),
    ("Compare options for a home office setup.",
     ["Desk", "Chair", "Monitor", "Lighting", "Keyboard", "Headset", "Webcam", "Internet",
      "Storage", "Plants", "Noise", "Cables", "Laptop stand", "Budget", "Printer", "Backup"]),
]


@dataclass
class Task:
    """One benchmark prompt: the user message, the caller-given step titles, and what is right."""

    id: str
    family: str
    size: int
    prompt: str
    branches: list[str]
    expected: dict[str, Any] = field(default_factory=dict)
    """Family-specific truth per step title: ``matches`` and ``values`` (the grade, or the RAM; retrieval),
    ``answers`` (multi_question)."""
    max_branch_tokens: int = 32
    max_new_tokens: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Task":
        return cls(**data)


# --------------------------------------------------------------------------- generation


def _budget(family: str, size: int) -> tuple[int, int]:
    per_branch = BRANCH_TOKENS[family]
    return per_branch, size * per_branch + MERGE_TOKENS


def _retrieval(rng: random.Random, size: int, index: int) -> Task:
    if index % 2 == 0:
        names = rng.sample(_FIRST_NAMES, size)
        grades = [rng.randint(45, 99) for _ in names]
        threshold = rng.choice([60, 70, 75, 80])
        lines = "\n".join(f"- {n}: grade {g}" for n, g in zip(names, grades))
        prompt = (
            f"Here are {size} students and their exam grades:\n{lines}\n\n"
            f"Which students have a grade of at least {threshold}? Check each student in its own step "
            "and end that step with MATCH or NO MATCH. Then list the matching students."
        )
        matches = {f"Check {n}": g >= threshold for n, g in zip(names, grades)}
        values = {f"Check {n}": g for n, g in zip(names, grades)}
    else:
        names = rng.sample(_PRODUCTS, size)
        specs = [(rng.choice([4, 8, 16, 32]), rng.randrange(300, 2000, 50)) for _ in names]
        ram, price = rng.choice([8, 16]), rng.choice([900, 1200])
        lines = "\n".join(f"- {n}: {r} GB RAM, price {p} dollars" for n, (r, p) in zip(names, specs))
        prompt = (
            f"Here are {size} laptops:\n{lines}\n\n"
            f"Which laptops have at least {ram} GB RAM and cost at most {price} dollars? Check each laptop "
            "in its own step and end that step with MATCH or NO MATCH. Then list the matching laptops."
        )
        matches = {f"Check {n}": r >= ram and p <= price for n, (r, p) in zip(names, specs)}
        values = {f"Check {n}": r for n, (r, _) in zip(names, specs)}
    per_branch, total = _budget("retrieval", size)
    return Task(
        id=f"retrieval-{size}-{index}", family="retrieval", size=size, prompt=prompt,
        branches=list(matches), expected={"matches": matches, "values": values},
        max_branch_tokens=per_branch, max_new_tokens=total,
    )


def _question(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(5)
    a, b = rng.randint(11, 89), rng.randint(2, 49)
    if kind == 0:
        return f"What is {a} plus {b}?", a + b
    if kind == 1:
        return f"What is {a} minus {b}?", a - b
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", a * b
    if kind == 3:
        return f"How many days are in {b % 9 + 2} weeks?", (b % 9 + 2) * 7
    return f"How many minutes are in {b % 9 + 2} hours?", (b % 9 + 2) * 60


def _multi_question(rng: random.Random, size: int, index: int) -> Task:
    questions: list[tuple[str, int]] = []
    while len(questions) < size:
        q = _question(rng)
        if all(q[0] != seen for seen, _ in questions):
            questions.append(q)
    listing = "\n".join(f"{i + 1}. {q}" for i, (q, _) in enumerate(questions))
    prompt = (
        f"Answer these {size} questions. Answer each question in its own step with the number first.\n{listing}"
    )
    titles = [q for q, _ in questions]  # the question itself: a small model needs it in the title
    per_branch, total = _budget("multi_question", size)
    return Task(
        id=f"multi_question-{size}-{index}", family="multi_question", size=size, prompt=prompt,
        branches=titles, expected={"answers": {t: a for t, (_, a) in zip(titles, questions)}},
        max_branch_tokens=per_branch, max_new_tokens=total,
    )


def _planning(rng: random.Random, size: int, index: int) -> Task:
    goal, aspects = _PLANNING[(index + size) % len(_PLANNING)]
    chosen = rng.sample(aspects, size)
    prompt = (
        f"{goal} Cover these {size} aspects, one step each, in two sentences per step: "
        + ", ".join(chosen) + ". Then summarise the plan."
    )
    per_branch, total = _budget("planning", size)
    return Task(
        id=f"planning-{size}-{index}", family="planning", size=size, prompt=prompt,
        branches=list(chosen), expected={}, max_branch_tokens=per_branch, max_new_tokens=total,
    )


_MAKERS = {"retrieval": _retrieval, "multi_question": _multi_question, "planning": _planning}


def generate_tasks(
    *,
    seed: int = DEFAULT_SEED,
    families: tuple[str, ...] | list[str] = FAMILIES,
    sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
    per_size: int = 2,
) -> list[Task]:
    """Every task of ``families`` x ``sizes`` x ``per_size``, the same for the same arguments."""
    tasks = []
    for family in families:
        if family not in _MAKERS:
            raise ValueError(f"unknown task family {family!r}; known: {list(FAMILIES)}")
        for size in sizes:
            if not 1 <= size <= len(_FIRST_NAMES) or size > 16 and family == "planning":
                raise ValueError(f"size {size} is out of range for {family!r}")
            # One generator per (family, size): adding a size does not change the other tasks.
            rng = random.Random(f"{seed}-{family}-{size}")
            tasks.extend(_MAKERS[family](rng, size, i) for i in range(per_size))
    return tasks


def save_tasks(tasks: list[Task], folder: str | Path) -> list[Path]:
    """Write one JSON file per family into ``folder``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for family in dict.fromkeys(t.family for t in tasks):
        path = folder / f"{family}.json"
        rows = [t.to_dict() for t in tasks if t.family == family]
        path.write_text(json.dumps(rows, indent=1) + "\n")
        paths.append(path)
    return paths


def load_tasks(folder: str | Path, families: list[str] | None = None, sizes: list[int] | None = None,
               per_size: int | None = None) -> list[Task]:
    """Read tasks written by `save_tasks`, keeping the given families, sizes and first ``per_size`` of each."""
    tasks: list[Task] = []
    for family in families or FAMILIES:
        path = Path(folder) / f"{family}.json"
        if not path.exists():
            raise FileNotFoundError(f"no task file {path}; run benchmarks/make_tasks.py")
        tasks.extend(Task.from_dict(row) for row in json.loads(path.read_text()))
    if sizes is not None:
        tasks = [t for t in tasks if t.size in sizes]
    if per_size is not None:
        counts: dict[tuple[str, int], int] = {}
        kept = []
        for t in tasks:
            key = (t.family, t.size)
            if counts.get(key, 0) < per_size:
                kept.append(t)
                counts[key] = counts.get(key, 0) + 1
        tasks = kept
    return tasks


# --------------------------------------------------------------------------- scoring

_NUMBER = re.compile(r"-?\d+")
_VERDICT = re.compile(r"\b(NO[\s_-]*MATCH|MATCH)\b", re.IGNORECASE)


def split_steps(text: str) -> tuple[dict[str, str], str]:
    """Parse reading-order text ``...####t1:b1####t2:b2####%%%%conclusion`` into ``({title: body}, conclusion)``.

    Used where a method returns only text (plain decoding with a model-made plan).
    A title listed twice (a plan, then its expansion) keeps its longest body.
    """
    steps: dict[str, str] = {}
    conclusion = ""
    for segment in text.split("####")[1:]:
        if segment.startswith("%%%%"):
            conclusion = segment[4:]
            continue
        title, sep, body = segment.partition(":")
        if not sep:
            continue
        title = title.strip()
        if len(body.strip()) >= len(steps.get(title, "").strip()):
            steps[title] = body
    return steps, conclusion


def _match_title(wanted: str, steps: dict[str, str], position: int, count: int) -> str | None:
    """The step body for ``wanted``: same title; else a title containing it or its last word;
    else, when the answer has exactly as many steps as asked, the step at the same position."""
    norm = {t.strip().lower(): b for t, b in steps.items()}
    want = wanted.strip().lower()
    if want in norm:
        return norm[want]
    for title, body in norm.items():
        if want in title or (len(title) >= 3 and title in want):
            return body
    key = re.sub(r"\W+$", "", want.split()[-1])
    for title, body in norm.items():
        if len(key) >= 3 and re.search(rf"\b{re.escape(key)}\b", title):
            return body
    if len(steps) == count:
        return list(steps.values())[position]
    return None


def verdict(body: str | None) -> bool | None:
    """``True`` for MATCH, ``False`` for NO MATCH (the last one written wins), ``None`` if neither."""
    if not body:
        return None
    found = _VERDICT.findall(body)
    if not found:
        return None
    return not found[-1].upper().startswith("NO")


def first_number(body: str | None) -> int | None:
    if not body:
        return None
    m = _NUMBER.search(body.replace(",", ""))
    return int(m.group()) if m else None


def stated_answer(body: str | None) -> int | None:
    """The number a step gives as its answer: the first one after the last ``=``, else the first one."""
    if not body:
        return None
    head, eq, tail = body.rpartition("=")
    return first_number(tail) if eq and first_number(tail) is not None else first_number(body)


def score(task: Task, steps: dict[str, str]) -> dict[str, Any]:
    """Exact-match quality of one answer, given its steps as ``{title: body}``.

    Returns ``{"kind": ..., "correct": n, "total": n, "accuracy": x, "exact": bool, "values_correct": n}``
    (``correct``: the MATCH / NO MATCH verdict or the answer is right; ``values_correct``: the step's first
    number is the record's value, e.g. the grade, or for questions the answer);
    planning tasks have no truth and return only ``coverage`` (steps found / asked).
    """
    found = [_match_title(t, steps, i, len(task.branches)) for i, t in enumerate(task.branches)]
    coverage = sum(b is not None for b in found) / len(task.branches)
    if task.family == "retrieval":
        truth = task.expected["matches"]
        ok = [verdict(b) == truth[t] for t, b in zip(task.branches, found)]
        stated = [first_number(b) == task.expected["values"][t] for t, b in zip(task.branches, found)]
    elif task.family == "multi_question":
        truth = task.expected["answers"]
        ok = [stated_answer(b) == truth[t] for t, b in zip(task.branches, found)]
        stated = ok
    else:
        return {"kind": "agreement", "coverage": round(coverage, 4)}
    return {
        "kind": "exact_match",
        "correct": sum(ok),
        "total": len(ok),
        "accuracy": round(sum(ok) / len(ok), 4),
        "exact": all(ok),
        "coverage": round(coverage, 4),
        "values_correct": sum(stated),
    }
