"""Branch-format prompt strings and their filling."""

from __future__ import annotations

import pytest

from pbd_integrations.prompts import (
    PARALLEL_SYSTEM_PROMPT,
    PLANNING_SYSTEM_PROMPT,
    TEMPLATES,
    format_branch_prompt,
    template_variables,
)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_teaches_the_engine_format(kind: str) -> None:
    text = TEMPLATES[kind]
    assert "####" in text and "####%%%%" in text
    assert text.startswith((PARALLEL_SYSTEM_PROMPT, PLANNING_SYSTEM_PROMPT))


@pytest.mark.parametrize(
    ("kind", "variables"),
    [
        ("parallel", []),
        ("plain_reasoning", []),
        ("check_each_item", ["items"]),
        ("compare_options", ["options", "criteria"]),
        ("sub_questions", ["questions"]),
    ],
)
def test_template_variables(kind: str, variables: list[str]) -> None:
    assert template_variables(kind) == variables


def test_format_branch_prompt_joins_lists_and_keeps_braces() -> None:
    text = format_branch_prompt("check_each_item", items=["eggs", "milk {2%}"])
    assert "eggs; milk {2%}" in text
    assert "{items}" not in text


def test_format_branch_prompt_names_missing_and_unknown_variables() -> None:
    with pytest.raises(ValueError, match=r"missing \['criteria'\], unexpected \['color'\]"):
        format_branch_prompt("compare_options", options="a, b", color="red")
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        format_branch_prompt("nope")
