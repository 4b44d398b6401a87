"""The LlamaIndex prompt templates carry the shared parallel-step instruction."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import MessageRole

from pbd_integrations.llama_index import (
    BRANCH_TEMPLATES,
    PARALLEL_AGENT_SYSTEM_PROMPT,
    PARALLEL_REFINE_TEMPLATE,
    PARALLEL_TEXT_QA_TEMPLATE,
    branch_template,
)
from pbd_integrations.prompts import (
    PARALLEL_SYSTEM_PROMPT,
    TEMPLATES,
    format_branch_prompt,
)


def test_text_qa_template_has_the_query_engine_variables_and_the_branch_instruction():
    assert set(PARALLEL_TEXT_QA_TEMPLATE.template_vars) == {"context_str", "query_str"}
    system, user = PARALLEL_TEXT_QA_TEMPLATE.format_messages(context_str="Paris is in France.", query_str="Where?")
    assert system.role == MessageRole.SYSTEM and system.content == PARALLEL_SYSTEM_PROMPT
    assert "Paris is in France." in user.content and user.content.endswith("Question: Where?\nAnswer:")


def test_refine_template_has_the_refine_variables():
    assert set(PARALLEL_REFINE_TEMPLATE.template_vars) == {"query_str", "existing_answer", "context_msg"}


def test_agent_system_prompt_is_the_shared_instruction():
    assert PARALLEL_AGENT_SYSTEM_PROMPT == PARALLEL_SYSTEM_PROMPT


def test_there_is_a_branch_template_for_every_shared_template():
    assert set(BRANCH_TEMPLATES) == set(TEMPLATES)


def test_branch_template_fills_lists_like_the_shared_formatter():
    template = branch_template("compare_options")
    (user,) = template.format_messages(options=["tea", "coffee"], criteria="caffeine", query_str="Which?")
    expected = format_branch_prompt("compare_options", options=["tea", "coffee"], criteria="caffeine")
    assert user.role == MessageRole.USER
    assert user.content == expected + "\n\nQuestion: Which?\nAnswer:"
    assert "tea; coffee" in user.content


def test_default_branch_template_asks_only_for_the_question():
    assert branch_template().template_vars == ["query_str"]


def test_unknown_branch_template_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown prompt template 'nope'.*compare_options"):
        branch_template("nope")
