"""The ChatPromptTemplate versions of the branch prompts."""

from __future__ import annotations

import pytest

from pbd_integrations.langchain import prompts
from pbd_integrations.prompts import TEMPLATES


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        (prompts.PARALLEL_PROMPT, ["question"]),
        (prompts.PLAIN_REASONING_PROMPT, ["question"]),
        (prompts.CHECK_EACH_ITEM_PROMPT, ["items", "question"]),
        (prompts.COMPARE_OPTIONS_PROMPT, ["criteria", "options", "question"]),
        (prompts.SUB_QUESTIONS_PROMPT, ["question", "questions"]),
    ],
)
def test_templates_take_their_variables(template, variables: list[str]) -> None:
    assert sorted(template.input_variables) == variables


def test_a_filled_template_is_one_human_message_with_the_format_and_the_question() -> None:
    (message,) = prompts.CHECK_EACH_ITEM_PROMPT.format_messages(items="eggs; milk", question="Vegan?")
    assert message.type == "human"
    assert message.content.startswith(TEMPLATES["parallel"])
    assert "eggs; milk" in message.content and message.content.endswith("Question: Vegan?\nAnswer:")


def test_unknown_template_kind() -> None:
    with pytest.raises(ValueError, match="unknown prompt template"):
        prompts.branch_prompt("haiku")
