"""LlamaIndex integration: `ParallelBranchLLM` and parallel-structure prompt templates."""

from .base import ParallelBranchLLM
from .prompts import (
    BRANCH_TEMPLATES,
    PARALLEL_AGENT_SYSTEM_PROMPT,
    PARALLEL_REFINE_TEMPLATE,
    PARALLEL_TEXT_QA_TEMPLATE,
    branch_template,
)

__all__ = [
    "BRANCH_TEMPLATES",
    "PARALLEL_AGENT_SYSTEM_PROMPT",
    "PARALLEL_REFINE_TEMPLATE",
    "PARALLEL_TEXT_QA_TEMPLATE",
    "ParallelBranchLLM",
    "branch_template",
]
