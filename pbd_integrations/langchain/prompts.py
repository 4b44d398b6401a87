"""`ChatPromptTemplate` versions of `pbd_integrations.prompts`.

Each template is one human message: the branch-format instructions (with the
variant's placeholders), then ``Question: {question}``. Small models follow
the format more often there than in a system message (see
`pbd_integrations.prompts.PARALLEL_SYSTEM_PROMPT`)::

    chain = CHECK_EACH_ITEM_PROMPT | ChatParallelBranch() | StrOutputParser()
    chain.invoke({"items": "eggs; milk; flour", "question": "Is each item vegan?"})
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate

from pbd_integrations.prompts import TEMPLATES


def branch_prompt(kind: str = "parallel") -> ChatPromptTemplate:
    """A chat prompt for template ``kind`` (see `pbd_integrations.prompts.TEMPLATES`) and a ``{question}``."""
    try:
        system = TEMPLATES[kind]
    except KeyError:
        msg = f"unknown prompt template {kind!r}; known: {sorted(TEMPLATES)}"
        raise ValueError(msg) from None
    return ChatPromptTemplate.from_messages([("human", system + "\n\nQuestion: {question}\nAnswer:")])


PARALLEL_PROMPT = branch_prompt("parallel")
"""Variables: ``question``."""
CHECK_EACH_ITEM_PROMPT = branch_prompt("check_each_item")
"""Variables: ``items``, ``question``."""
COMPARE_OPTIONS_PROMPT = branch_prompt("compare_options")
"""Variables: ``options``, ``criteria``, ``question``."""
SUB_QUESTIONS_PROMPT = branch_prompt("sub_questions")
"""Variables: ``questions``, ``question``."""
PLAIN_REASONING_PROMPT = branch_prompt("plain_reasoning")
"""Variables: ``question``."""
