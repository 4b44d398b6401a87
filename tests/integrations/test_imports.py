"""Public names, and lazy imports: one framework never requires the other."""

from __future__ import annotations

import subprocess
import sys

import pbd_integrations


def test_top_level_exports() -> None:
    assert pbd_integrations.__all__ == ["ChatParallelBranch", "ParallelBranchLLM"]


def test_langchain_exports() -> None:
    from pbd_integrations import langchain

    assert langchain.__all__ == [
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


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_package_imports_no_framework() -> None:
    modules = _modules_after("import pbd_integrations, pbd_integrations.prompts, pbd_integrations.tool_calls")
    assert not any(m.startswith(("langchain_core", "llama_index")) for m in modules)


def test_the_langchain_adapter_does_not_import_llama_index() -> None:
    modules = _modules_after("from pbd_integrations import ChatParallelBranch")
    assert "langchain_core" in modules
    assert not any(m.startswith("llama_index") for m in modules)
