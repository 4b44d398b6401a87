"""Score step texts against the known value of each step, and the statistics the report needs.

One parser for both modes: a step's text is the same kind of thing whether it came from a parallel
branch or from a sequential answer (`steps_of_result` takes it from ``result.branches`` and, for any title
missing there, from the raw ``####title:`` text split by the step titles).

How a value is read from a step (`parse_value`), in this order:

1. Markdown emphasis and backticks are dropped and the text is cut at the next ``####``.
2. If the step says ``Answer: ...`` / ``answer is ...`` / ``Answer = ...``, the value is read from what
   follows the last such marker (the first value in it; for a number, the first line, and after its last
   ``=`` if it has one: ``Answer: 76 + 10 = 86``); if nothing can be read there, the earlier markers, then the
   whole step, are tried.
3. In the whole step (no usable marker):
   - **yes/no** (also true/false): the first word if it is one ("Yes, ..."), else the last one written;
   - **number**: the first number after the last ``=``; else a number that opens the step and stands alone
     (``74.``, ``150 dollars (3 x 50)``, not ``83 minus 9 ...``); else the last number after "is", "equals",
     "comes to", ... (``83 minus 9 is 74.`` gives 74); else the last number written; thousands separators,
     decimals and ``$`` are understood;
   - **name**: the first of the step's known choices that is mentioned (whole words, any case).

A step is correct when the value read equals the expected one (numbers within 0.005).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Iterable, Sequence

STEP_MARKER = "####"
CLOSE_MARKER = "####%%%%"

_MARK = re.compile(r"\b(?:final\s+)?answer\b\s*(?:is\b\s*:?|:|=|-)\s*", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_EMPHASIS = re.compile(r"[*_`]+")
_NUM = r"[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_OPENING = re.compile(rf"^\s*{_NUM}\s*(?:[A-Za-z%]+)?\s*(?:[.,;!(]|$)")
"""A step that opens with its number (``74.``, ``150 dollars (3 x 50)``), not with an operand (``83 minus 9``)."""
_STATED = re.compile(rf"\b(?:is|are|equals?|gives|makes|comes\s+to|totals?|was|be)\s+(?:about\s+|approximately\s+)?({_NUM})",
                     re.IGNORECASE)


def _clean(text: str) -> str:
    text = text.split(STEP_MARKER, 1)[0]
    return _EMPHASIS.sub("", text).strip()


def _to_number(token: str) -> float:
    return float(token.replace("\u2212", "-").replace("$", "").replace(",", ""))


def _numbers(text: str) -> list[float]:
    return [_to_number(m.group()) for m in _NUMBER.finditer(text)]


def _yesno(text: str, *, tail: bool) -> bool | None:
    words = [w.lower() for w in _YESNO.findall(text)]
    if not words:
        return None
    first_word = re.match(r"\W*(\w+)", text)
    if tail or (first_word and first_word.group(1).lower() in ("yes", "no", "true", "false")):
        pick = words[0]
    else:
        pick = words[-1]
    return pick in ("yes", "true")


def _number(text: str, *, tail: bool) -> float | None:
    if tail:  # what follows "Answer:": its first line, the result of a sum written there ("76 + 10 = 86")
        text = next((line for line in text.splitlines() if line.strip()), "")
    found = _numbers(text)
    if not found:
        return None
    head, eq, after = text.rpartition("=")
    if eq:
        after_numbers = _numbers(after)
        if after_numbers:
            return after_numbers[0]
    if tail:
        return found[0]
    if _OPENING.match(text):
        return found[0]
    stated = list(_STATED.finditer(text))
    if stated:
        return _to_number(stated[-1].group(1))
    return found[-1]


def _name(text: str, choices: Sequence[str], *, tail: bool) -> str | None:
    best: tuple[int, int, str] | None = None
    for choice in choices:
        m = re.search(rf"(?<!\w){re.escape(choice)}(?!\w)", text, re.IGNORECASE)
        if m is not None:
            key = (m.start(), -len(choice), choice)  # earliest; at the same place the longest choice
            if best is None or key < best:
                best = key
    return best[2] if best else None


def _read(text: str, kind: str, choices: Sequence[str] | None, *, tail: bool) -> Any:
    if kind == "yesno":
        return _yesno(text, tail=tail)
    if kind == "number":
        return _number(text, tail=tail)
    if kind == "name":
        return _name(text, choices or [], tail=tail)
    raise ValueError(f"unknown answer type {kind!r}")


def parse_value(text: str | None, kind: str, choices: Sequence[str] | None = None) -> Any:
    """The value a step states (``bool`` for yes/no, ``float`` for numbers, a choice for names), or None."""
    if not text:
        return None
    text = _clean(text)
    marks = list(_MARK.finditer(text))
    for i in range(len(marks) - 1, -1, -1):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        value = _read(text[marks[i].end():end], kind, choices, tail=True)
        if value is not None:
            return value
    return _read(text, kind, choices, tail=False)


def is_correct(value: Any, expected: Any, kind: str) -> bool:
    if value is None:
        return False
    if kind == "yesno":
        return bool(value) == bool(expected)
    if kind == "number":
        return math.isclose(float(value), float(expected), abs_tol=0.005)
    return str(value).strip().lower() == str(expected).strip().lower()


def score_step(text: str | None, step: dict[str, Any]) -> dict[str, Any]:
    value = parse_value(text, step["type"], step.get("choices"))
    return {"value": value, "correct": is_correct(value, step["answer"], step["type"])}


# --------------------------------------------------------------------------- steps of an answer


def split_by_titles(text: str, titles: Sequence[str]) -> dict[str, str | None]:
    """Each title's body in a sequential answer: from ``####<title>:`` (or, failing that, ``<title>:``) to the
    next ``####``. Titles are looked for in order, each after the previous one found."""
    out: dict[str, str | None] = {}
    pos = 0
    for title in titles:
        start = -1
        for header in (f"{STEP_MARKER}{title}:", f"{title}:"):
            i = text.find(header, pos)
            if i >= 0:
                start = i + len(header)
                break
        if start < 0:
            i = text.lower().find(title.lower(), pos)
            start = i + len(title) if i >= 0 else -1
        if start < 0:
            out[title] = None
            continue
        end = text.find(STEP_MARKER, start)
        end = len(text) if end < 0 else end
        out[title] = text[start:end]
        pos = end
    return out


def raw_text(result: Any) -> str:
    """The ``####title:`` protocol text of a DecodeResult (``raw_text`` when the engine has one)."""
    return getattr(result, "raw_text", None) or result.text


def steps_of_result(result: Any, titles: Sequence[str]) -> tuple[list[str | None], str]:
    """``(bodies in title order, source)``: from ``result.branches`` by title; titles missing there from the
    raw text split by the titles. ``source`` is ``branches``, ``text`` or ``mixed``."""
    by_title: dict[str, str] = {}
    for b in getattr(result, "branches", None) or []:
        by_title.setdefault(b.title, b.text)
    missing = [t for t in titles if t not in by_title]
    if missing:
        split = split_by_titles(raw_text(result), titles)
        for t in missing:
            if split.get(t) is not None:
                by_title[t] = split[t]  # type: ignore[assignment]
    source = "branches" if not missing else ("text" if len(missing) == len(titles) else "mixed")
    return [by_title.get(t) for t in titles], source


_FILLER = frozenset(
    "a an and at does do for how in is it its of on the to what which who step answer total cost price "
    "pass passes much many".split()
)


def _title_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9.]+", text.lower()) if w not in _FILLER and (len(w) > 1 or w.isdigit())}


def match_planned_steps(steps: Sequence[dict[str, Any]], branches: Sequence[tuple[str, str]]) -> list[str | None]:
    """Bodies of the model's own planned branches, aligned with the task's steps (None: no branch for a step).

    A model that plans for itself names its steps in its own words (``Zoe`` for "Does Zoe pass?",
    ``83 minus 9`` for "What is 83 minus 9?"). Each step takes the unused branch whose title shares the
    most words with the step's title (filler words aside), at least one; ties go to the earlier branch.
    When no title shares a word with any step and there are as many branches as steps, they are taken in
    order. The same rule reads both modes' answers.
    """
    step_words = [_title_words(s["title"]) for s in steps]
    branch_words = [_title_words(title) for title, _ in branches]
    pairs = sorted(
        ((len(sw & bw), -j, -i, i, j) for i, sw in enumerate(step_words) for j, bw in enumerate(branch_words)),
        reverse=True,
    )
    out: list[str | None] = [None] * len(steps)
    used: set[int] = set()
    for overlap, _, _, i, j in pairs:
        if overlap == 0:
            break
        if out[i] is None and j not in used:
            out[i], _ = branches[j][1], used.add(j)
    if not used and len(branches) == len(steps):
        out = [body for _, body in branches]
    return out


def conclusion_of(text: str) -> str:
    """What follows ``####%%%%`` (the conclusion), or ``""``."""
    head, sep, tail = text.partition(CLOSE_MARKER)
    return tail if sep else ""


def score_task(task: dict[str, Any], bodies: Sequence[str | None], conclusion: str | None = None) -> dict[str, Any]:
    steps = [score_step(b, s) for b, s in zip(bodies, task["steps"])]
    out: dict[str, Any] = {
        "values": [s["value"] for s in steps],
        "correct": [s["correct"] for s in steps],
        "n_correct": sum(s["correct"] for s in steps),
        "n_steps": len(steps),
        "found": sum(b is not None for b in bodies),
    }
    final = task.get("final")
    if final is not None:
        value = _name(_clean(conclusion or ""), final["choices"], tail=False) if conclusion else None
        out["final_value"] = value
        out["final_correct"] = is_correct(value, final["answer"], final["type"])
    return out


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cluster_bootstrap(
    groups: Sequence[Sequence[tuple[int, int]]], reps: int = 2000, seed: int = 0
) -> list[tuple[float, float]]:
    """95% percentile intervals of ``sum(k)/sum(n)`` for several paired measures, resampling tasks.

    ``groups[m][i] = (k, n)`` is measure m on task i (the same tasks for every measure, so intervals of
    differences can be taken by passing the difference as its own measure: see `paired_difference`).
    """
    rng = random.Random(seed)
    n_tasks = len(groups[0]) if groups else 0
    if n_tasks == 0:
        return [(0.0, 1.0) for _ in groups]
    samples: list[list[float]] = [[] for _ in groups]
    for _ in range(reps):
        idx = [rng.randrange(n_tasks) for _ in range(n_tasks)]
        for m, g in enumerate(groups):
            k = sum(g[i][0] for i in idx)
            n = sum(g[i][1] for i in idx)
            samples[m].append(k / n if n else 0.0)
    return [_percentiles(s) for s in samples]


def paired_difference(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]], reps: int = 2000,
                      seed: int = 0) -> tuple[float, tuple[float, float]]:
    """``acc(b) - acc(a)`` over the same tasks, with a 95% task-level bootstrap interval."""
    rng = random.Random(seed)
    n_tasks = len(a)
    diff = _acc(b, range(n_tasks)) - _acc(a, range(n_tasks))
    draws = []
    for _ in range(reps):
        idx = [rng.randrange(n_tasks) for _ in range(n_tasks)]
        draws.append(_acc(b, idx) - _acc(a, idx))
    return diff, _percentiles(draws)


def _acc(pairs: Sequence[tuple[int, int]], idx: Iterable[int]) -> float:
    idx = list(idx)
    n = sum(pairs[i][1] for i in idx)
    return sum(pairs[i][0] for i in idx) / n if n else 0.0


def _percentiles(values: list[float], lo: float = 0.025, hi: float = 0.975) -> tuple[float, float]:
    s = sorted(values)
    if not s:
        return (0.0, 0.0)
    return (s[int(lo * (len(s) - 1))], s[int(math.ceil(hi * (len(s) - 1)))])


def proportion(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "wilson95": [round(lo, 4), round(hi, 4)]}
