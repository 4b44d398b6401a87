"""A LangChain chain: prompt template | ChatParallelBranch | output parser.

Runs offline on the default model (SmolLM2-135M-Instruct). The steps are
given by the caller (``.bind(branches=...)``), so the engine skips planning
and decodes all of them at once, then writes the conclusion.

    python examples/langchain_chain.py
"""

from __future__ import annotations

import time

from langchain_core.output_parsers import StrOutputParser

from pbd_integrations import ChatParallelBranch
from pbd_integrations.langchain import CHECK_EACH_ITEM_PROMPT

ITEMS = ["apples", "bread", "cheese", "carrots"]


def main() -> None:
    llm = ChatParallelBranch(max_tokens=120, max_branch_tokens=32, repetition_penalty=1.3)
    chain = CHECK_EACH_ITEM_PROMPT | llm.bind(branches=[item.capitalize() for item in ITEMS]) | StrOutputParser()

    started = time.perf_counter()
    answer = chain.invoke({"items": ", ".join(ITEMS), "question": "Which of these foods are vegetables?"})
    print(answer)
    print(f"\n({time.perf_counter() - started:.1f} s)")

    # The same chain without the parser shows what the decode cost.
    message = (CHECK_EACH_ITEM_PROMPT | llm.bind(branches=["Apples", "Bread"])).invoke(
        {"items": "apples, bread", "question": "Is each item sweet?"}
    )
    meta = message.response_metadata
    print("\nbranches:", [(b["title"], b["tokens"]) for b in meta["branches"]])
    print("tokens per forward pass:", meta["tokens_per_forward_pass"], "| usage:", message.usage_metadata)


if __name__ == "__main__":
    main()
