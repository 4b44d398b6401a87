"""LangChain integration: `ChatParallelBranch` and ready prompt templates."""

from pbd_integrations.langchain.chat_models import (
    BRANCH_END_EVENT,
    BRANCH_START_EVENT,
    BRANCH_TOKEN_EVENT,
    ChatParallelBranch,
)
from pbd_integrations.langchain.prompts import (
    CHECK_EACH_ITEM_PROMPT,
    COMPARE_OPTIONS_PROMPT,
    PARALLEL_PROMPT,
    PLAIN_REASONING_PROMPT,
    SUB_QUESTIONS_PROMPT,
    branch_prompt,
)

__all__ = [
    "BRANCH_END_EVENT",
    "BRANCH_START_EVENT",
    "BRANCH_TOKEN_EVENT",
    "CHECK_EACH_ITEM_PROMPT",
    "COMPARE_OPTIONS_PROMPT",
    "PARALLEL_PROMPT",
    "PLAIN_REASONING_PROMPT",
    "SUB_QUESTIONS_PROMPT",
    "ChatParallelBranch",
    "branch_prompt",
]
