"""Prompts that ask a model to write its independent steps as titled branches.

The engine detects the paper's format (Yu et al., 2025)::

    ####<title 1>:<step 1>####<title 2>:<step 2>####%%%%<conclusion>

and decodes the steps of such a list in parallel. These are plain strings,
with no framework imports: the LangChain ``ChatPromptTemplate`` versions are
in `pbd_integrations.langchain.prompts`, and the LlamaIndex adapter builds its
own templates from the same strings.

Every template is a system prompt; `format_branch_prompt` fills its
placeholders (``{items}``, ``{options}``, ``{questions}``, ``{criteria}``).
"""

from __future__ import annotations

import string

PARALLEL_SYSTEM_PROMPT = (
    "When you need to handle multiple parallel independent steps, split your answer into steps: "
    "start each step with '####', then the step's title, then a colon ':', then the step itself. "
    "After all steps output '####%%%%' and then the conclusion.\n"
    "Example:\n"
    "Question: Which of these are fruits: apple, carrot?\n"
    "Answer:\n"
    "####Apple: An apple is a fruit.\n"
    "####Carrot: A carrot is a vegetable.\n"
    "####%%%%\n"
    "The apple is a fruit; the carrot is not."
)
"""The paper's instruction (independent steps as ``####title:`` branches, closed by ``####%%%%``) with a worked example.

Measured on SmolLM2-135M-Instruct (greedy, 4 questions: items, options,
sub-questions, facts): the instruction alone produced the format 0/4 times
as a system message; with the worked example, 1/4 as a system message and
2/4 inside the user message. Small models follow it best in the user turn,
so the LangChain templates put it there. Caller-given ``branches`` do not
depend on the model following it at all.
"""

PLANNING_SYSTEM_PROMPT = (
    "If the request has two or more parts that can be worked out independently of each other (check each "
    "of several items, answer several separate questions, compare several options), write each part as a "
    "step: '####', a short title that names the part, ':', then the step. After the last step write "
    "'####%%%%' and then the conclusion. If the request is one question, one calculation or one piece of "
    "writing, answer it directly, without '####'.\n"
    "Example of a request with independent parts:\n"
    "Which of these are fruits: apple, carrot?\n"
    "####Apple: An apple is a fruit.\n"
    "####Carrot: A carrot is a vegetable.\n"
    "####%%%%\n"
    "The apple is a fruit; the carrot is not.\n"
    "Example of a single request:\n"
    "A box holds 6 cups. How many cups do 4 boxes hold?\n"
    "4 boxes hold 4 × 6 = 24 cups."
)
"""What the adapters add to the system message by default (``plan_instructions``), so a model plans
on the user's own prompts: the branch format only where a request splits into independent parts, with
one example of each case (`benchmarks/quality/planning_prompts.py` measures the alternatives).

The single request is a word problem: with a multiplication there (``What is 12 times 3?``),
Qwen2.5-Coder-0.5B planned word problems as ``Box 1`` ... ``Box 16`` (4 of 36 single prompts planned at
512 tokens, 35 of 40 parallelizable); with the word problem, 2 of 36 and 36 of 40."""


MODELS_WITHOUT_PLANNING_INSTRUCTIONS: frozenset[str] = frozenset({"SmolLM2-135M-Instruct"})
"""Models whose answers the planning instructions make worse, so ``plan_instructions=None`` (the default)
leaves them out. SmolLM2-135M planned on 0 of 40 parallelizable prompts with them
(`benchmarks/quality/planning_prompts.py`) and copied their example instead of answering: "Count from
1 to 10" came back as "12 times 3 is 36."."""


def planning_instructions(
    messages: list[dict[str, object]],
    *,
    branches: object,
    parallel: bool,
    model_name: str | None = None,
    requested: bool | None = None,
) -> str | None:
    """The system text that makes the model plan by itself, or None where it does not apply.

    Args:
        requested: the adapter's ``plan_instructions``: True adds them, False never; None (default)
            adds them unless ``model_name`` is one of `MODELS_WITHOUT_PLANNING_INSTRUCTIONS`.

    Never added when the caller gave the branches, decodes plainly (``parallel=False``), or the
    conversation already carries the branch format (one of our templates, or the user's own
    instructions mentioning ``####%%%%``).
    """
    if requested is False or (requested is None and model_name in MODELS_WITHOUT_PLANNING_INSTRUCTIONS):
        return None
    if branches is not None or not parallel:
        return None
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and "####%%%%" in content:
            return None
        if isinstance(content, list) and any("####%%%%" in str(part) for part in content):
            return None
    return PLANNING_SYSTEM_PROMPT


CHECK_EACH_ITEM = (
    PARALLEL_SYSTEM_PROMPT
    + "\n\nTask: check each of these items on its own: {items}. "
    "Write one step per item, titled with the item's name, and check only that item in it. "
    "In the conclusion, list which items pass and which fail."
)
"""Check every item of a list independently, then summarise ({items})."""

COMPARE_OPTIONS = (
    PARALLEL_SYSTEM_PROMPT
    + "\n\nTask: compare these options: {options}. "
    "Write one step per option, titled with the option's name, describing that option against: {criteria}. "
    "In the conclusion, say which option is best and why."
)
"""Assess each option on its own, then recommend one ({options}, {criteria})."""

SUB_QUESTIONS = (
    PARALLEL_SYSTEM_PROMPT
    + "\n\nTask: answer each of these sub-questions in its own step, titled with the sub-question: "
    "{questions}. In the conclusion, combine the answers into one answer."
)
"""Answer independent sub-questions, then combine them ({questions})."""

PLAIN_REASONING = (
    PARALLEL_SYSTEM_PROMPT
    + "\n\nThink about which parts of the problem do not depend on each other and "
    "work on them as separate steps. If the problem has no independent parts, just answer it."
)
"""General reasoning: let the model decide whether there are independent steps."""

TEMPLATES: dict[str, str] = {
    "parallel": PARALLEL_SYSTEM_PROMPT,
    "planning": PLANNING_SYSTEM_PROMPT,
    "check_each_item": CHECK_EACH_ITEM,
    "compare_options": COMPARE_OPTIONS,
    "sub_questions": SUB_QUESTIONS,
    "plain_reasoning": PLAIN_REASONING,
}
"""Every template by name."""


def template_variables(kind: str) -> list[str]:
    """The placeholder names that template ``kind`` needs, in order of appearance."""
    template = _template(kind)
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return list(dict.fromkeys(names))


def format_branch_prompt(kind: str, **variables: object) -> str:
    """Fill template ``kind`` with ``variables``.

    List values are joined with ``"; "`` so ``items=["a", "b"]`` reads naturally.
    A missing or unknown variable raises `ValueError` naming the expected ones.

    >>> format_branch_prompt("check_each_item", items=["eggs", "milk"])[-70:]
    'Write one step per item, ...'  # doctest: +SKIP
    """
    template = _template(kind)
    expected = set(template_variables(kind))
    missing = sorted(expected - set(variables))
    unknown = sorted(set(variables) - expected)
    if missing or unknown:
        msg = (
            f"template {kind!r} takes variables {sorted(expected)}; "
            f"missing {missing}, unexpected {unknown}"
        )
        raise ValueError(msg)
    values = {name: _as_text(value) for name, value in variables.items()}
    # str.format would choke on the literal braces a caller might put in values; the
    # templates themselves contain no other braces, so a plain replace is exact.
    text = template
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def _template(kind: str) -> str:
    try:
        return TEMPLATES[kind]
    except KeyError:
        msg = f"unknown prompt template {kind!r}; known: {sorted(TEMPLATES)}"
        raise ValueError(msg) from None


def _as_text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)
