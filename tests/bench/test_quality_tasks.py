"""benchmarks/quality: the task generator is seeded and shipped, and the scorer reads step texts right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pbd_quality_{name}", QUALITY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _load("tasks")
S = _load("score")


def test_generator_is_deterministic_and_seeded():
    a, b = T.generate(), T.generate()
    assert json.dumps(a) == json.dumps(b)
    other = T.generate(seed=T.DEFAULT_SEED + 1)
    assert [t["prompt"] for t in other["parallel"]] != [t["prompt"] for t in a["parallel"]]
    assert a["seed"] == T.DEFAULT_SEED


def test_shipped_file_equals_the_generator():
    path = T.task_file(T.DEFAULT_SEED)
    assert path.read_text() == T.dumps(T.generate(T.DEFAULT_SEED)), "regenerate: python benchmarks/quality/tasks.py"


def test_counts_kinds_and_well_formed_steps():
    data = T.generate()
    parallel, single = data["parallel"], data["single"]
    assert len(parallel) >= 100 and len(single) >= 30
    assert {t["kind"] for t in parallel} == set(T.KINDS)
    assert {t["variant"] for t in single} == set(T.SINGLE_CATEGORIES)
    assert all(t["parallel"] for t in parallel) and not any(t["parallel"] for t in single)
    assert len({t["id"] for t in parallel + single}) == len(parallel) + len(single)
    # --limit keeps every kind: kinds interleave
    assert {t["kind"] for t in parallel[: len(T.KINDS)]} == set(T.KINDS)
    assert {t["variant"] for t in single[: len(T.SINGLE_CATEGORIES)]} == set(T.SINGLE_CATEGORIES)
    for t in parallel:
        titles = [s["title"] for s in t["steps"]]
        assert 3 <= len(titles) == len(set(titles)) <= 6
        assert t["max_new_tokens"] >= len(titles) * t["max_branch_tokens"]
        for s in t["steps"]:
            assert s["type"] in ("yesno", "number", "name")
            if s["type"] == "name":
                assert s["answer"] in s["choices"]
                assert s["answer"] in t["prompt"]  # the fact is in the prompt
            if s["type"] == "number" and t["variant"] in ("facts", "quotes"):
                assert str(s["answer"]) in t["prompt"]
    # yes/no tasks have both answers somewhere, and no yes/no task is all one answer
    for t in parallel:
        values = [s["answer"] for s in t["steps"] if s["type"] == "yesno"]
        if len(values) == len(t["steps"]) and t["kind"] == "check_records":
            assert len(set(values)) == 2


STATUSES = ["shipped", "pending", "cancelled", "delivered"]


@pytest.mark.parametrize(
    "text, kind, choices, expected",
    [
        (" Zoe has 71, which is below 75. Answer: no", "yesno", None, False),
        (" Yes, Goran's grade is 91.", "yesno", None, True),
        (" Goran's grade is 91, so the answer is yes.", "yesno", None, True),
        (" **Answer:** No.", "yesno", None, False),
        (" 83 minus 9 is 74.", "number", None, 74),
        (" 83 - 9 = 74", "number", None, 74),
        (" 74. Because 83 minus 9 leaves 74.", "number", None, 74),
        (" 3 nights at 50 dollars per night is 150 dollars.", "number", None, 150),
        (" The price is 76 dollars and shipping 10, so the total is 86 dollars. Answer: 86", "number", None, 86),
        (" ACME trades at $1,234.56 today. Answer: $1,234.56", "number", None, 1234.56),
        (" Answer: 76 + 10 = 86 dollars\nAnswer: 86", "number", None, 86),
        (" Answer: 76 + 10 = 86 dollars", "number", None, 86),
        (" Answer: 87\nAnswer: 87\n", "number", None, 87),
        (" Order A7882 was delivered. Answer: delivered", "name", STATUSES, "delivered"),
        (" The order A9321 has been cancelled.", "name", STATUSES, "cancelled"),
        (" The capital of Velmora is Tarsk.", "name", ["Tarsk", "Goran"], "Tarsk"),
    ],
)
def test_parser_reads_correct_answers(text, kind, choices, expected):
    value = S.parse_value(text, kind, choices)
    assert S.is_correct(value, expected, kind), (text, value)


@pytest.mark.parametrize(
    "text, kind, choices, expected",
    [
        (" Zoe has 71, which is below 75. Answer: yes", "yesno", None, False),
        (" No, Goran's grade is 91.", "yesno", None, True),
        (" 83 minus 9 is 75.", "number", None, 74),
        (" The total is 96 dollars.", "number", None, 86),
        (" Order A7882 is still pending.", "name", STATUSES, "delivered"),
        (" I cannot tell from the results.", "name", STATUSES, "delivered"),
        (" I do not know.", "number", None, 12),
        ("", "yesno", None, True),
        (None, "number", None, 3),
    ],
)
def test_parser_rejects_wrong_or_missing_answers(text, kind, choices, expected):
    assert not S.is_correct(S.parse_value(text, kind, choices), expected, kind)


def _task():
    return {
        "steps": [
            {"title": "Is Zoe's grade at least 75?", "type": "yesno", "answer": False},
            {"title": "What is 83 minus 9?", "type": "number", "answer": 74},
            {"title": "What is the status of order A1?", "type": "name", "answer": "shipped", "choices": STATUSES},
        ],
        "final": {"type": "name", "answer": "Vega Store", "choices": ["Lumen Store", "Vega Store"]},
    }


def test_both_modes_score_the_same_from_branches_or_from_text():
    task = _task()
    titles = [s["title"] for s in task["steps"]]
    bodies = [" Zoe has 71. Answer: no\n", " 83 - 9 = 74\n", " It was shipped yesterday.\n"]
    raw = "".join(f"####{t}:{b}" for t, b in zip(titles, bodies)) + "####%%%%\nVega Store is cheapest."
    from_branches = SimpleNamespace(text=raw, branches=[SimpleNamespace(title=t, text=b) for t, b in zip(titles, bodies)])
    from_text = SimpleNamespace(text="readable text without markers", raw_text=raw, branches=[])
    for result, source in ((from_branches, "branches"), (from_text, "text")):
        found, got_source = S.steps_of_result(result, titles)
        assert got_source == source
        scored = S.score_task(task, found, S.conclusion_of(S.raw_text(result)))
        assert scored["correct"] == [True, True, True] and scored["final_correct"], scored
    wrong = [" Zoe has 71. Answer: yes", " 83 - 9 = 72", " It is pending."]
    scored = S.score_task(task, wrong, "Lumen Store is cheapest.")
    assert scored["n_correct"] == 0 and not scored["final_correct"]


def test_split_by_titles_finds_steps_in_order_and_tolerates_a_missing_one():
    text = "Intro.\n####A b?: x Answer: 3\n####C d?: y\n####%%%%\nconclusion"
    assert S.split_by_titles(text, ["A b?", "C d?"]) == {"A b?": " x Answer: 3\n", "C d?": " y\n"}
    assert S.split_by_titles(text, ["A b?", "Z?", "C d?"])["Z?"] is None


def test_intervals():
    lo, hi = S.wilson(50, 100)
    assert lo < 0.5 < hi and round(lo, 3) == 0.404 and round(hi, 3) == 0.596
    assert S.wilson(0, 10)[0] == pytest.approx(0.0) and S.wilson(10, 10)[1] == pytest.approx(1.0)
    pairs_a = [(1, 4)] * 20
    pairs_b = [(3, 4)] * 20
    diff, (dlo, dhi) = S.paired_difference(pairs_a, pairs_b)
    assert diff == 0.5 and dlo == dhi == 0.5
    (blo, bhi), = S.cluster_bootstrap([[(k % 5, 4) for k in range(40)]])
    assert blo < 0.5 < bhi  # k % 5 in 0..4 over 4: mean 0.5
