"""Do grammar-constrained answers finish at default settings? (issue 10, item 2)

    python benchmarks/structured_loops.py [--model default] [--max-tokens 512] [--json out.json]

Runs ``ChatParallelBranch(temperature=0)`` (no other option, as a new user
would) on structured-output prompts in the style of LangChain's standard
integration suite (``Joke`` with ``setup``/``punchline``, TypedDict and JSON
schema variants, an optional field, ``json_mode``, ``function_calling``) and
a few more topics. For each prompt it prints whether the answer parsed into
the schema, the engine's finish reason (``stop``: the JSON closed by itself;
``length``: the budget ran out), the tokens sampled and the answer text.

Greedy decoding of SmolLM2-135M tends to loop inside a JSON string
(``"I'm a cat, I'm a cat, ..."``) until the budget is gone; this counts how
often that still happens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from pydantic import BaseModel, Field
from typing_extensions import Annotated, TypedDict


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeOptional(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: Optional[str] = Field(default=None, description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: Annotated[str, ..., "question to set up a joke"]
    punchline: Annotated[str, ..., "answer to resolve the joke"]


JOKE_SCHEMA = Joke.model_json_schema()
JSON_MODE_PROMPT = (
    "Tell me a joke about cats. Return the result as a JSON with 'setup' and "
    "'punchline' keys. Return nothing other than JSON."
)

CASES: list[tuple[str, Any, str, str]] = [
    # (name, schema, method, prompt)
    ("pydantic", Joke, "json_schema", "Tell me a joke about cats."),
    ("typeddict", JokeDict, "json_schema", "Tell me a joke about cats."),
    ("json_schema", JOKE_SCHEMA, "json_schema", "Tell me a joke about cats."),
    ("optional-no-punchline", JokeOptional, "json_schema", "Give me the setup to a joke about cats, no punchline."),
    ("optional-with-punchline", JokeOptional, "json_schema", "Give me a joke about cats, include the punchline."),
    ("json_mode", Joke, "json_mode", JSON_MODE_PROMPT),
    ("function_calling", Joke, "function_calling", "Tell me a joke about cats."),
    ("dogs", Joke, "json_schema", "Tell me a joke about dogs."),
    ("programmers", Joke, "json_schema", "Tell me a joke about programmers."),
    ("pizza", Joke, "json_schema", "Tell me a joke about pizza."),
    ("the-ocean", Joke, "json_schema", "Tell me a joke about the ocean."),
    ("robots", Joke, "json_schema", "Tell me a joke about robots."),
]


def run(model: str, max_tokens: int | None, dtype: str = "auto", only: list[str] | None = None) -> list[dict[str, Any]]:
    from pbd_integrations import ChatParallelBranch

    params: dict[str, Any] = {"model": model, "temperature": 0, "dtype": dtype}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    llm = ChatParallelBranch(**params)
    rows = []
    for name, schema, method, prompt in CASES:
        if only and name not in only:
            continue
        chain = llm.with_structured_output(schema, method=method, include_raw=True)
        start = time.perf_counter()
        try:
            out = chain.invoke(prompt)
        except Exception as error:  # the adapter itself raised (a tool call cut by the budget, before issue 10)
            seconds = time.perf_counter() - start
            rows.append({"case": name, "parsed": False, "finish_reason": "raised", "tokens": None,
                         "seconds": round(seconds, 2), "text": f"{type(error).__name__}: {error}"[:300]})
            print(f"{name:24s} parsed=False finish=raised {seconds:6.1f}s  {rows[-1]['text'][:150]!r}", flush=True)
            continue
        seconds = time.perf_counter() - start
        raw = out["raw"]
        meta = raw.response_metadata
        text = raw.content or json.dumps([c["args"] for c in raw.tool_calls])
        parsed = out["parsed"]
        ok = out["parsing_error"] is None and parsed is not None
        if ok and isinstance(parsed, dict):
            ok = "setup" in parsed
        rows.append(
            {
                "case": name,
                "parsed": ok,
                "finish_reason": meta.get("pbd_finish_reason"),
                "tokens": raw.usage_metadata["output_tokens"] if raw.usage_metadata else None,
                "seconds": round(seconds, 2),
                "text": text,
            }
        )
        row = rows[-1]
        print(f"{name:24s} parsed={row['parsed']!s:5s} finish={row['finish_reason']:6s} tokens={row['tokens']:4d} "
              f"{seconds:6.1f}s  {text[:150]!r}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the adapter's (512)")
    parser.add_argument("--dtype", default="auto", help='weight dtype ("auto": bf16 where the CPU has it, else fp32)')
    parser.add_argument("--only", nargs="*", help="run only these cases")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = run(args.model, args.max_tokens, args.dtype, args.only)
    n = len(rows)
    parsed = sum(r["parsed"] for r in rows)
    closed = sum(r["finish_reason"] not in ("length", "raised") for r in rows)
    tokens = sum(r["tokens"] or 0 for r in rows)
    print(f"\nparsed {parsed}/{n}, closed by themselves (finish != length) {closed}/{n}, "
          f"tokens sampled {tokens}, mean {tokens / n:.1f}, adapter raised {sum(r['finish_reason'] == 'raised' for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": args.dtype, "max_tokens": args.max_tokens, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
