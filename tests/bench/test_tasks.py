"""Task generation is seeded and shipped; scoring is a table of cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbd_integrations.bench.tasks import (
    DEFAULT_SEED, DEFAULT_SIZES, FAMILIES, Task, first_number, generate_tasks, load_tasks, score, split_steps, verdict,
)

TASK_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "tasks"


def test_shipped_files_equal_the_generator():
    tasks = generate_tasks(seed=DEFAULT_SEED, families=FAMILIES, sizes=DEFAULT_SIZES, per_size=2)
    for family in FAMILIES:
        shipped = json.loads((TASK_DIR / f"{family}.json").read_text())
        assert shipped == [t.to_dict() for t in tasks if t.family == family], f"regenerate with benchmarks/make_tasks.py"


def test_generation_is_seeded_and_sizes_are_independent():
    a = generate_tasks(seed=1, sizes=[4, 8], per_size=1)
    b = generate_tasks(seed=1, sizes=[8], per_size=1)
    assert [t.to_dict() for t in a if t.size == 8] == [t.to_dict() for t in b]
    assert generate_tasks(seed=2, sizes=[4], per_size=1)[0].prompt != a[0].prompt
    for t in a:
        assert len(t.branches) == t.size == len(set(t.branches))
        assert all(":" not in b and "####" not in b for b in t.branches)
        assert t.max_new_tokens > t.size * t.max_branch_tokens


def test_load_filters():
    tasks = load_tasks(TASK_DIR, ["retrieval"], [8], per_size=1)
    assert [t.id for t in tasks] == ["retrieval-8-0"]


@pytest.mark.parametrize("body, expected", [
    ("grade 56 < 60, NO MATCH", False),
    ("grade 76, so MATCH.", True),
    ("no match", False),
    ("Match", True),
    ("MATCH? no: NO_MATCH", False),
    ("it passes", None),
    ("", None),
])
def test_verdict(body, expected):
    assert verdict(body) == expected


@pytest.mark.parametrize("body, expected", [(" 94.", 94), ("The answer is 1,200 minutes", 1200), ("-3", -3), ("none", None)])
def test_first_number(body, expected):
    assert first_number(body) == expected


def test_split_steps():
    steps, conclusion = split_steps("Plan:####A:####B:####%%%% ####A: body a####B: body b####%%%% done")
    assert steps == {"A": " body a", "B": " body b"}
    assert conclusion == " done"


def test_score_matches_titles_loosely():
    task = Task(id="t", family="retrieval", size=3, prompt="", branches=["Check Ana", "Check Bo", "Check Cy"],
                expected={"matches": {"Check Ana": True, "Check Bo": False, "Check Cy": True},
                          "values": {"Check Ana": 80, "Check Bo": 50, "Check Cy": 90}})
    result = score(task, {"Ana": "MATCH", "Check Bo": "50, NO MATCH", "cy's grade": "90 NO MATCH"})
    assert result == {"kind": "exact_match", "correct": 2, "total": 3, "accuracy": 0.6667, "exact": False,
                      "coverage": 1.0, "values_correct": 2}
    numbers = Task(id="q", family="multi_question", size=2, prompt="", branches=["What is 2 plus 3?", "What is 4 times 5?"],
                   expected={"answers": {"What is 2 plus 3?": 5, "What is 4 times 5?": 20}})
    assert score(numbers, {"Question 1": "5", "Question 2": "21"})["correct"] == 1  # by position
    assert score(numbers, {"1": "2 + 3 = 5", "2": "4 times 5 = 20"})["correct"] == 2  # short titles: by position
    assert score(Task(id="p", family="planning", size=1, prompt="", branches=["Food"]), {})["coverage"] == 0.0
