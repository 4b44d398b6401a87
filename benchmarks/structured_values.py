"""Do structured answers hold the right values, not copied placeholders? (issue 10, item 3)

    python benchmarks/structured_values.py [--model default] [--variants current fields] [--json out.json]

24 prompts whose right value is known (capital cities, arithmetic, extraction of a name and an
age from a given sentence), each asked through ``ChatParallelBranch(model=...)`` at default
settings with ``with_structured_output(<pydantic model>)``, greedy. A value counts as right when
it equals the expected one (strings compared case-insensitively, stripped of punctuation).

``--variants`` compares ways of presenting the schema to the model (the system text that
`pbd_integrations.chat.json_instructions` writes): ``current`` is what the adapters ship; the
others are candidates, measured the same way. The grammar is the same in every variant, so
every answer parses; only the values differ.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from pydantic import BaseModel, Field


class City(BaseModel):
    """A city."""

    name: str = Field(description="the city's name")
    country: str = Field(description="the country it is in")


class Sum(BaseModel):
    """The result of a calculation."""

    result: int = Field(description="the number the calculation gives")


class Person(BaseModel):
    """A person mentioned in a text."""

    name: str = Field(description="the person's first name")
    age: int = Field(description="the person's age in years")


CAPITALS = [("Norway", "Oslo"), ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Spain", "Madrid"), ("Germany", "Berlin")]
SUMS = [(12, 7, "+"), (9, 8, "+"), (40, 2, "+"), (15, 15, "+"), (6, 7, "*"), (3, 9, "*"), (100, 1, "-"), (50, 8, "-")]
PEOPLE = [("Maria", 34, "Lyon"), ("Tom", 27, "Leeds"), ("Aiko", 41, "Osaka"), ("Pedro", 19, "Porto"),
          ("Nina", 62, "Oslo"), ("Omar", 55, "Tunis"), ("Lena", 23, "Graz"), ("Raj", 38, "Pune")]


def prompts() -> list[dict[str, Any]]:
    """The 24 prompts with their schema and right values."""
    items = []
    for country, capital in CAPITALS:
        items.append({"kind": "capital", "schema": City, "prompt": f"Name the capital city of {country}.",
                      "expected": {"name": capital}})
    for a, b, op in SUMS:
        value = {"+": a + b, "*": a * b, "-": a - b}[op]
        word = {"+": "plus", "*": "times", "-": "minus"}[op]
        items.append({"kind": "arithmetic", "schema": Sum, "prompt": f"What is {a} {word} {b}?",
                      "expected": {"result": value}})
    for name, age, city in PEOPLE:
        items.append({"kind": "extraction", "schema": Person,
                      "prompt": f"Extract the person from this text: \"{name} is {age} years old and lives in {city}.\"",
                      "expected": {"name": name, "age": age}})
    return items


def _norm(value: Any) -> str:
    return re.sub(r"[^\w]", "", str(value)).lower()


def right(answer: Any, expected: dict[str, Any]) -> bool:
    if answer is None:
        return False
    data = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)
    return all(_norm(data.get(key)) == _norm(value) for key, value in expected.items())


def current_instructions(schema: dict[str, Any] | None) -> str:
    from pbd_integrations.chat import json_instructions

    return json_instructions(schema)


def _tool_prompt_with(call_lines: list[str]) -> Callable[[list[dict[str, Any]]], str]:
    """`pbd_integrations.tool_calls.tool_prompt` with other instructions after the tool list."""
    from pbd_integrations import tool_calls

    def prompt(tools: list[dict[str, Any]]) -> str:
        text = tool_calls.tool_prompt(tools)
        head = text[: text.index("</tools>") + len("</tools>")]
        return "\n".join([head, "", *call_lines])

    return prompt


TOOL_VARIANTS: dict[str, list[str]] = {
    "tools-no-example": [
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags.",
        "Each argument's value is the answer the user wants (work it out), not words copied from the question.",
    ],
    "tools-worked-example": [
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags. Each argument's value is the answer the user wants, worked out, not "
        "words copied from the question. For example, asked for the capital of Peru with a tool taking "
        "\"name\", you would write:",
        "<tool_call>",
        '{"name": "the_tool", "arguments": {"name": "Lima"}}',
        "</tool_call>",
    ],
}
VARIANTS: dict[str, Callable[[dict[str, Any] | None], str] | None] = {"current": None, **dict.fromkeys(TOOL_VARIANTS)}


def run(model: Any, variant: str, items: list[dict[str, Any]], method: str = "json_schema") -> dict[str, Any]:
    from pbd_integrations import ChatParallelBranch

    from pbd_integrations import chat

    patched = VARIANTS.get(variant)
    original, original_tools = chat.json_instructions, chat.tool_prompt
    if patched is not None:
        chat.json_instructions = patched
    if variant in TOOL_VARIANTS:
        chat.tool_prompt = _tool_prompt_with(TOOL_VARIANTS[variant])
    try:
        llm = ChatParallelBranch(model=model)
        if method == "llama_index":  # LlamaIndex's structured_predict at default settings
            from llama_index.core.prompts import PromptTemplate

            from pbd_integrations import ParallelBranchLLM

            index_llm = ParallelBranchLLM(model=model)

        def ask(item):
            try:
                if method == "llama_index":
                    return index_llm.structured_predict(item["schema"], PromptTemplate(item["prompt"])), None
                return llm.with_structured_output(item["schema"], method=method).invoke(item["prompt"]), None
            except Exception as error:  # a parse failure counts as wrong, with its reason
                return None, f"{type(error).__name__}: {error}"[:200]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, items))
        seconds = time.perf_counter() - t0
    finally:
        chat.json_instructions, chat.tool_prompt = original, original_tools
    rows = []
    for item, (answer, error) in zip(items, answers):
        rows.append({"kind": item["kind"], "prompt": item["prompt"], "expected": item["expected"],
                     "answer": answer.model_dump() if answer is not None else None, "error": error,
                     "right": right(answer, item["expected"])})
    by_kind = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        by_kind[kind] = f"{sum(r['right'] for r in mine)}/{len(mine)}"
    return {"variant": variant, "method": method, "right": sum(r["right"] for r in rows), "total": len(rows), "by_kind": by_kind,
            "seconds": round(seconds, 1), "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", nargs="+", default=["current"], choices=sorted(VARIANTS))
    parser.add_argument("--methods", nargs="+", default=["json_schema", "function_calling"],
                        choices=["json_schema", "function_calling", "json_mode", "llama_index"],
                        help="with_structured_output's method (function_calling: a tool call); llama_index: "
                             "ParallelBranchLLM.structured_predict at default settings")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    from pbd_integrations.registry import get_decoder

    decoder = get_decoder(args.model)
    items = prompts()
    report = {"command": "python benchmarks/structured_values.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": decoder.model_name, "dtype": str(getattr(decoder, "mask_dtype", "")),
              "platform": platform.platform(), "variants": []}
    for variant in args.variants:
        for method in args.methods:
            result = run(decoder, variant, items, method)
            report["variants"].append(result)
            print(f"{decoder.model_name} [{variant}, {method}]: {result['right']}/{result['total']} right "
                  f"({result['by_kind']}) in {result['seconds']} s")
            for row in result["rows"]:
                if not row["right"]:
                    print(f"    {row['prompt'][:60]:<60} -> {row['answer'] or row['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
