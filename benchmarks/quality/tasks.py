"""Quality-evaluation tasks: generated from a seed, shipped as JSON, checked without a judge model.

Two sets:

- **parallelizable** (`KINDS`, `PER_KIND` each, 3-6 independent steps): every step has a title and one
  known correct value (yes/no, a number or a name) that `score.py` checks automatically. Every fact a step
  needs is in the prompt, so a small model can succeed:

  - ``check_records``: records in the prompt (grades, prices, departments) and one criterion; each step
    checks one record (yes/no).
  - ``sub_questions``: independent questions, either arithmetic (a number) or about fictional facts listed
    in the prompt, with distractor facts (a number or a name).
  - ``compare_options``: options with their attributes (shops with price and shipping, hotels with a nightly
    rate); each step computes one option's total (a number); the conclusion names the cheapest (scored too).
  - ``tool_results``: agent-style; the context already holds several JSON tool results (order status,
    weather, stock quotes, user records); each step examines one result (a name, yes/no or a number).

- **single** (`SINGLE_CATEGORIES`, `PER_CATEGORY` each): prompts with no parallel structure (one
  multiplication, one word problem, a haiku, one definition, one rewrite, one explanation), to measure
  how often a model plans a parallel block where there is nothing to split. The two arithmetic categories
  carry an answer too.

Everything is drawn from ``random.Random(f"{seed}-{kind}-{index}")``, so a task does not change when
other tasks are added. ``python benchmarks/quality/tasks.py`` writes ``tasks/seed-<seed>.json``;
``--check`` fails when the shipped file differs from the generator.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 1
DEFAULT_SEED = 20251122
KINDS: tuple[str, ...] = ("check_records", "sub_questions", "compare_options", "tool_results")
SINGLE_CATEGORIES: tuple[str, ...] = ("multiplication", "word_problem", "haiku", "definition", "rewrite", "explain")
PER_KIND = 30
PER_CATEGORY = 6
STEP_COUNTS: tuple[int, ...] = (3, 4, 5, 6)
BRANCH_TOKENS = 40
"""Budget of one step: room for a short reason and ``Answer: <value>``."""
CONCLUSION_TOKENS = 48
SINGLE_TOKENS = 96

HERE = Path(__file__).resolve().parent
TASK_DIR = HERE / "tasks"

_NAMES = [
    "Alice", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Kemal", "Lena",
    "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe",
]
_BRANDS = [
    "Aster", "Birch", "Cobalt", "Delta", "Ember", "Falcon", "Garnet", "Harbor", "Indigo", "Juniper", "Kestrel",
    "Lumen", "Maple", "Nimbus", "Onyx", "Pebble", "Quartz", "Raven", "Sierra", "Tundra", "Vega", "Willow",
]
_DEPARTMENTS = ["Sales", "Finance", "Legal", "Research", "Support", "Marketing"]
_CITIES = [
    "Oslo", "Lisbon", "Cairo", "Lima", "Hanoi", "Quito", "Dakar", "Perth", "Riga", "Osaka", "Denver", "Porto",
    "Tunis", "Bergen", "Austin", "Krakow",
]
_TICKERS = ["ACME", "BOLT", "CRUX", "DYNO", "EPIC", "FLUX", "GRID", "HALO", "IONX", "JADE", "KITE", "LOOM"]
_STATUSES = ["shipped", "pending", "cancelled", "delivered"]
_CONDITIONS = ["rain", "sunny", "cloudy", "snow"]
_PLANS = ["free", "basic", "pro", "team"]
_SYLLABLES = ["ka", "lo", "ven", "tor", "mir", "sa", "del", "ru", "bex", "na", "quo", "zan", "fel", "dri", "om",
              "pe", "ash", "vi", "gor", "lun"]

_HAIKU_TOPICS = ["autumn rain", "a quiet harbor", "the first snow", "a city at night", "an old cat", "morning tea",
                 "a mountain lake", "spring wind"]
_TERMS = ["photosynthesis", "inflation", "a prime number", "an algorithm", "gravity", "a metaphor", "democracy",
          "an enzyme"]
_SENTENCES = ["The children play in the park.", "She writes a letter to her friend.", "We walk to the station.",
              "The chef cooks a large dinner.", "He fixes the old bicycle.", "They build a small boat.",
              "I read the newspaper every morning.", "The river floods the valley."]
_PHENOMENA = ["the sky is blue", "ice floats on water", "metal feels cold to the touch", "bread rises",
              "leaves change colour in autumn", "we see lightning before we hear thunder",
              "a spoon looks bent in a glass of water", "salt melts ice on roads"]


def _answer_rule(kind: str) -> str:
    return {
        "yesno": "End each step with 'Answer: yes' or 'Answer: no'.",
        "number": "End each step with 'Answer: <number>'.",
        "name": "End each step with 'Answer: <name>'.",
        "mixed": "End each step with 'Answer: <value>'.",
    }[kind]


def _step(title: str, kind: str, answer: Any, choices: list[str] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"title": title, "type": kind, "answer": answer}
    if choices is not None:
        step["choices"] = list(choices)
    return step


def _task(kind: str, variant: str, index: int, prompt: str, steps: list[dict], final: dict | None = None) -> dict:
    titles = [s["title"] for s in steps]
    assert len(set(titles)) == len(titles), titles
    for t in titles:  # titles the engine writes unchanged (see pbd_core.plan_format.render_title)
        assert ":" not in t and "#" not in t and "%" not in t and "\n" not in t, t
    return {
        "id": f"{kind}-{index:02d}",
        "kind": kind,
        "variant": variant,
        "parallel": True,
        "prompt": prompt,
        "steps": steps,
        "final": final,
        "max_branch_tokens": BRANCH_TOKENS,
        "max_new_tokens": len(steps) * BRANCH_TOKENS + CONCLUSION_TOKENS,
    }


def _split_values(rng: random.Random, n: int, low: int, high: int, threshold: int, step: int = 1) -> list[tuple[int, bool]]:
    """``n`` values, each on a random side of ``threshold`` (never equal to it), with the side returned;
    both sides occur whenever n >= 2."""
    sides = [rng.random() < 0.5 for _ in range(n)]
    if n >= 2 and len(set(sides)) == 1:
        sides[rng.randrange(n)] = not sides[0]
    out = []
    for above in sides:
        if above:
            v = rng.randrange(threshold + step, high + 1, step)
        else:
            v = rng.randrange(low, threshold, step)
        out.append((v, above))
    return out


def _fictional_name(rng: random.Random, taken: set[str], syllables: int = 2) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
        if name not in taken and len(name) >= 4:
            taken.add(name)
            return name


# --------------------------------------------------------------------------- the four parallelizable kinds


def _check_records(rng: random.Random, n: int, index: int) -> dict:
    variant = ("grades", "prices", "departments")[index % 3]
    if variant == "grades":
        names = rng.sample(_NAMES, n)
        threshold = rng.choice([60, 65, 70, 75, 80])
        values = _split_values(rng, n, 40, 99, threshold)
        lines = "\n".join(f"- {name}: {v}" for name, (v, _) in zip(names, values))
        prompt = (
            f"Here are the exam grades of {n} students:\n{lines}\n\n"
            f"A student passes with a grade of at least {threshold}. Check each student in its own step: "
            f"does the student pass? {_answer_rule('yesno')} Then list the students who pass."
        )
        steps = [_step(f"Is {name}'s grade at least {threshold}?", "yesno", above)
                 for name, (_, above) in zip(names, values)]
    elif variant == "prices":
        names = rng.sample(_BRANDS, n)
        budget = rng.choice([800, 1000, 1200])
        values = _split_values(rng, n, budget - 500, budget + 500, budget, step=10)
        lines = "\n".join(f"- {name} laptop: {v} dollars" for name, (v, _) in zip(names, values))
        prompt = (
            f"Here are {n} laptops and their prices:\n{lines}\n\n"
            f"My budget is {budget} dollars. Check each laptop in its own step: does it cost at most {budget} "
            f"dollars? {_answer_rule('yesno')} Then list the laptops I can afford."
        )
        steps = [_step(f"Does the {name} laptop cost at most {budget} dollars?", "yesno", not above)
                 for name, (_, above) in zip(names, values)]
    else:
        names = rng.sample(_NAMES, n)
        target = rng.choice(_DEPARTMENTS)
        others = [d for d in _DEPARTMENTS if d != target]
        inside = [rng.random() < 0.5 for _ in range(n)]
        if len(set(inside)) == 1:
            inside[rng.randrange(n)] = not inside[0]
        depts = [target if i else rng.choice(others) for i in inside]
        lines = "\n".join(f"- {name}: {d} department" for name, d in zip(names, depts))
        prompt = (
            f"Here is where {n} employees work:\n{lines}\n\n"
            f"Check each employee in its own step: does the employee work in {target}? {_answer_rule('yesno')} "
            f"Then list everyone in {target}."
        )
        steps = [_step(f"Does {name} work in {target}?", "yesno", i) for name, i in zip(names, inside)]
    return _task("check_records", variant, index, prompt, steps)


def _arithmetic_question(rng: random.Random) -> tuple[str, int]:
    op = rng.randrange(3)
    if op == 0:
        a, b = rng.randint(11, 89), rng.randint(2, 49)
        return f"What is {a} plus {b}?", a + b
    if op == 1:
        a, b = rng.randint(30, 99), rng.randint(2, 29)
        return f"What is {a} minus {b}?", a - b
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", a * b


def _facts(rng: random.Random, count: int) -> list[tuple[str, str, str, Any]]:
    """``count`` fictional facts: ``(fact sentence, question, answer type, answer)``."""
    taken: set[str] = set()
    out = []
    kinds = [rng.randrange(5) for _ in range(count)]
    for kind in kinds:
        if kind == 0:
            country, capital = _fictional_name(rng, taken, 3), _fictional_name(rng, taken)
            out.append((f"The capital of {country} is {capital}.", f"What is the capital of {country}?", "name", capital))
        elif kind == 1:
            tower, height = _fictional_name(rng, taken), rng.randint(120, 640)
            out.append((f"{tower} Tower is {height} meters tall.", f"How tall is {tower} Tower in meters?", "number", height))
        elif kind == 2:
            river, length = _fictional_name(rng, taken), rng.randint(150, 3900)
            out.append((f"The {river} river is {length} km long.", f"How long is the {river} river in km?", "number", length))
        elif kind == 3:
            town, year = _fictional_name(rng, taken), rng.randint(1150, 1950)
            out.append((f"The town of {town} was founded in {year}.", f"In which year was {town} founded?", "number", year))
        else:
            device, inventor = _fictional_name(rng, taken, 3), rng.choice([x for x in _NAMES if x not in taken])
            taken.add(inventor)
            out.append((f"The {device} engine was invented by {inventor}.", f"Who invented the {device} engine?", "name", inventor))
    return out


def _sub_questions(rng: random.Random, n: int, index: int) -> dict:
    variant = ("arithmetic", "facts")[index % 2]
    if variant == "arithmetic":
        questions: list[tuple[str, int]] = []
        while len(questions) < n:
            q = _arithmetic_question(rng)
            if all(q[0] != seen for seen, _ in questions):
                questions.append(q)
        listing = "\n".join(f"{i + 1}. {q}" for i, (q, _) in enumerate(questions))
        prompt = f"Answer these {n} questions, each in its own step. {_answer_rule('number')}\n{listing}"
        steps = [_step(q, "number", a) for q, a in questions]
    else:
        facts = _facts(rng, n + 2)  # two distractors
        asked = rng.sample(range(len(facts)), n)
        names = [f[3] for f in facts if f[2] == "name"]
        shown = facts[:]
        rng.shuffle(shown)
        fact_lines = "\n".join(f"- {f[0]}" for f in shown)
        listing = "\n".join(f"{i + 1}. {facts[j][1]}" for i, j in enumerate(asked))
        prompt = (
            f"Read these facts:\n{fact_lines}\n\nUsing only these facts, answer these {n} questions, each in its "
            f"own step. {_answer_rule('mixed')}\n{listing}"
        )
        steps = [_step(facts[j][1], facts[j][2], facts[j][3], names if facts[j][2] == "name" else None) for j in asked]
    return _task("sub_questions", variant, index, prompt, steps)


def _distinct_minimum(values: list[int]) -> bool:
    return values.count(min(values)) == 1


def _compare_options(rng: random.Random, n: int, index: int) -> dict:
    variant = ("shops", "hotels")[index % 2]
    while True:
        if variant == "shops":
            item = rng.choice(["desk lamp", "kettle", "backpack", "bike helmet", "coffee grinder", "rain jacket"])
            names = [f"{b} Store" for b in rng.sample(_BRANDS, n)]
            prices = [rng.randint(20, 90) for _ in names]
            shipping = [rng.choice([0, 3, 5, 6, 8, 10, 12, 15]) for _ in names]
            totals = [p + s for p, s in zip(prices, shipping)]
            if not _distinct_minimum(totals):
                continue
            lines = "\n".join(f"- {name}: price {p} dollars, shipping {s} dollars"
                              for name, p, s in zip(names, prices, shipping))
            prompt = (
                f"I want to buy a {item}. These {n} shops sell it:\n{lines}\n\n"
                f"Work out the total cost at each shop in its own step (price plus shipping). "
                f"{_answer_rule('number')} Then say which shop is cheapest in total."
            )
            steps = [_step(f"Total cost at {name}", "number", t) for name, t in zip(names, totals)]
        else:
            nights = rng.choice([2, 3])
            names = [f"Hotel {b}" for b in rng.sample(_BRANDS, n)]
            rates = [rng.randrange(40, 155, 5) for _ in names]
            totals = [nights * r for r in rates]
            if not _distinct_minimum(totals):
                continue
            lines = "\n".join(f"- {name}: {r} dollars per night" for name, r in zip(names, rates))
            prompt = (
                f"I need a hotel for {nights} nights. Here are {n} options:\n{lines}\n\n"
                f"Work out the cost of {nights} nights at each hotel in its own step. {_answer_rule('number')} "
                f"Then say which hotel is cheapest."
            )
            steps = [_step(f"Cost of {nights} nights at {name}", "number", t) for name, t in zip(names, totals)]
        cheapest = names[totals.index(min(totals))]
        return _task("compare_options", variant, index, prompt, steps,
                     final={"type": "name", "answer": cheapest, "choices": names})


def _tool_call(name: str, args: dict, result: dict) -> str:
    return f"{name}({json.dumps(args)}) returned:\n{json.dumps(result)}"


def _tool_results(rng: random.Random, n: int, index: int) -> dict:
    variant = ("orders", "weather", "quotes", "users")[index % 4]
    if variant == "orders":
        ids = [f"A{x}" for x in rng.sample(range(1000, 9999), n)]
        statuses = [rng.choice(_STATUSES) for _ in ids]
        calls = [_tool_call("get_order_status", {"order_id": i},
                            {"order_id": i, "status": s, "items": rng.randint(1, 5),
                             "updated": f"2025-11-{rng.randint(1, 28):02d}"}) for i, s in zip(ids, statuses)]
        question = "A customer asked where their orders are."
        instruction = (f"Examine each tool result in its own step: what is the order's status? "
                       f"End each step with 'Answer: <status>'. Then summarise for the customer.")
        steps = [_step(f"What is the status of order {i}?", "name", s, _STATUSES) for i, s in zip(ids, statuses)]
    elif variant == "weather":
        cities = rng.sample(_CITIES, n)
        raining = [rng.random() < 0.5 for _ in cities]
        if len(set(raining)) == 1:
            raining[rng.randrange(n)] = not raining[0]
        conds = [("rain" if r else rng.choice([c for c in _CONDITIONS if c != "rain"])) for r in raining]
        calls = [_tool_call("get_weather", {"city": c},
                            {"city": c, "temp_c": rng.randint(-8, 1) if cond == "snow" else rng.randint(4, 31),
                             "condition": cond, "wind_kph": rng.randint(0, 40)})
                 for c, cond in zip(cities, conds)]
        question = "The user is planning a trip and asked which of these cities have rain right now."
        instruction = (f"Examine each tool result in its own step: is it raining in that city? "
                       f"{_answer_rule('yesno')} Then tell the user where to bring an umbrella.")
        steps = [_step(f"Is it raining in {c}?", "yesno", r) for c, r in zip(cities, raining)]
    elif variant == "quotes":
        tickers = rng.sample(_TICKERS, n)
        prices = [round(rng.uniform(12, 480), 2) for _ in tickers]
        calls = [_tool_call("get_stock_quote", {"ticker": t},
                            {"ticker": t, "price": p, "change_pct": round(rng.uniform(-4, 4), 1), "currency": "USD"})
                 for t, p in zip(tickers, prices)]
        question = "The user asked for the current price of each stock in their watchlist."
        instruction = (f"Examine each tool result in its own step: what is the stock's price? "
                       f"{_answer_rule('number')} Then list the prices for the user.")
        steps = [_step(f"What is the price of {t}?", "number", p) for t, p in zip(tickers, prices)]
    else:
        ids = rng.sample(range(10, 99), n)
        names = rng.sample(_NAMES, n)
        plans = [rng.choice(_PLANS) for _ in ids]
        calls = [_tool_call("lookup_user", {"user_id": i},
                            {"user_id": i, "name": nm, "plan": pl, "active": rng.random() < 0.8})
                 for i, nm, pl in zip(ids, names, plans)]
        question = "An admin asked which subscription plan each of these users is on."
        instruction = (f"Examine each tool result in its own step: which plan is the user on? "
                       f"End each step with 'Answer: <plan>'. Then summarise for the admin.")
        steps = [_step(f"Which plan is user {i} on?", "name", pl, _PLANS) for i, pl in zip(ids, plans)]
    prompt = (
        f"{question} You already called a tool {n} times and got these results:\n\n"
        + "\n\n".join(calls) + f"\n\n{instruction}"
    )
    return _task("tool_results", variant, index, prompt, steps)


_MAKERS = {
    "check_records": _check_records,
    "sub_questions": _sub_questions,
    "compare_options": _compare_options,
    "tool_results": _tool_results,
}


# --------------------------------------------------------------------------- prompts with no parallel structure


def _single(rng: random.Random, category: str, index: int, pick: Any) -> dict:
    answer = None
    if category == "multiplication":
        a, b = rng.randint(13, 97), rng.randint(12, 49)
        prompt, answer = f"What is {a} times {b}?", {"type": "number", "answer": a * b}
    elif category == "word_problem":
        form = index % 3
        if form == 0:
            v, h = rng.randrange(40, 125, 5), rng.randint(2, 6)
            prompt, value = (f"A train travels at {v} km per hour for {h} hours. How many kilometers does it travel?",
                             v * h)
        elif form == 1:
            start, spent, earned = rng.randint(40, 90), rng.randint(5, 35), rng.randint(5, 30)
            prompt, value = (f"Mia has {start} dollars. She spends {spent} dollars on a book and then earns {earned} "
                             f"dollars. How many dollars does she have now?", start - spent + earned)
        else:
            boxes, per, broken = rng.randint(3, 9), rng.randint(6, 12), rng.randint(1, 5)
            prompt, value = (f"A shop gets {boxes} boxes with {per} cups in each box. {broken} cups are broken. "
                             f"How many cups are not broken?", boxes * per - broken)
        answer = {"type": "number", "answer": value}
    elif category == "haiku":
        prompt = f"Write a haiku about {pick}."
    elif category == "definition":
        prompt = f"Give a one-sentence definition of {pick}."
    elif category == "rewrite":
        prompt = f"Rewrite this sentence in the past tense: \"{pick}\""
    else:
        prompt = f"Explain in two sentences why {pick}."
    return {
        "id": f"single-{category}-{index:02d}",
        "kind": "single",
        "variant": category,
        "parallel": False,
        "prompt": prompt,
        "answer": answer,
        "max_new_tokens": SINGLE_TOKENS,
        "max_branch_tokens": BRANCH_TOKENS,
    }


_POOLS = {"haiku": _HAIKU_TOPICS, "definition": _TERMS, "rewrite": _SENTENCES, "explain": _PHENOMENA}


# --------------------------------------------------------------------------- the whole set


def generate(seed: int = DEFAULT_SEED, per_kind: int = PER_KIND, per_category: int = PER_CATEGORY) -> dict[str, Any]:
    """Every task for ``seed``: ``{"seed", "generator_version", "counts", "parallel": [...], "single": [...]}``.

    Parallelizable tasks are interleaved by kind and single prompts by category (``--limit N`` and
    ``--single-limit N`` in `run.py` keep every kind), and step counts cycle through `STEP_COUNTS`.
    """
    parallel = []
    for index in range(per_kind):
        for kind in KINDS:
            rng = random.Random(f"{seed}-{kind}-{index}")
            n = STEP_COUNTS[index % len(STEP_COUNTS)]
            parallel.append(_MAKERS[kind](rng, n, index))
    picks = {c: random.Random(f"{seed}-single-{c}").sample(_POOLS[c], per_category) if c in _POOLS
             else [None] * per_category for c in SINGLE_CATEGORIES}
    single = [
        _single(random.Random(f"{seed}-single-{category}-{index}"), category, index, picks[category][index])
        for index in range(per_category) for category in SINGLE_CATEGORIES  # interleaved, like the kinds
    ]
    counts = {
        "parallel": len(parallel),
        "single": len(single),
        "steps": sum(len(t["steps"]) for t in parallel),
        "by_kind": {k: sum(t["kind"] == k for t in parallel) for k in KINDS},
        "by_category": {c: sum(t["variant"] == c for t in single) for c in SINGLE_CATEGORIES},
    }
    return {"seed": seed, "generator_version": GENERATOR_VERSION, "counts": counts, "parallel": parallel, "single": single}


def task_file(seed: int = DEFAULT_SEED, folder: Path = TASK_DIR) -> Path:
    return Path(folder) / f"seed-{seed}.json"


def dumps(tasks: dict[str, Any]) -> str:
    return json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"


def load(path: str | Path | None = None, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The shipped task file for ``seed`` (or ``path``)."""
    path = Path(path) if path is not None else task_file(seed)
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) benchmarks/quality/tasks/seed-<seed>.json.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", default=str(TASK_DIR))
    parser.add_argument("--check", action="store_true", help="fail if the shipped file differs from the generator")
    args = parser.parse_args(argv)
    text = dumps(generate(args.seed))
    path = task_file(args.seed, Path(args.out))
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} differs from the generator (seed {args.seed}); rerun without --check", file=sys.stderr)
            return 1
        print(f"{path} matches the generator (seed {args.seed})")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
