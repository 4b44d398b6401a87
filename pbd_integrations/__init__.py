"""Framework adapters for the parallel-branch decoding engine.

``ChatParallelBranch`` (LangChain) and ``ParallelBranchLLM`` (LlamaIndex) are
imported lazily, so using one framework never requires the other to be
installed. The framework-free shared code lives in `registry`, `prompts`,
`tool_calls` and `grammar`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .langchain import ChatParallelBranch
    from .llama_index import ParallelBranchLLM

__all__ = ["ChatParallelBranch", "ParallelBranchLLM"]

_LAZY = {
    "ChatParallelBranch": ".langchain",
    "ParallelBranchLLM": ".llama_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
