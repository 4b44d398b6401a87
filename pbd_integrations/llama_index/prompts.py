"""LlamaIndex prompt templates that ask for parallel step structure.

Built from the framework-free strings in `pbd_integrations.prompts`, so both
adapters ask the model the same way. Use them where LlamaIndex takes a
template:

    >>> engine = index.as_query_engine(llm=llm, text_qa_template=PARALLEL_TEXT_QA_TEMPLATE)  # doctest: +SKIP
    >>> agent = FunctionAgent(tools=[...], llm=llm, system_prompt=PARALLEL_AGENT_SYSTEM_PROMPT)  # doctest: +SKIP
    >>> messages = branch_template("compare_options").format_messages(
    ...     options=["tea", "coffee"], criteria="caffeine", query_str="Which one tonight?")  # doctest: +SKIP
    >>> llm.chat(messages, force_plan=True)  # doctest: +SKIP

``force_plan=True`` makes the engine start the answer with a step list, for
models that do not follow the instructions on their own.
"""

from __future__ import annotations

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.prompts import ChatPromptTemplate, PromptType

from ..prompts import PARALLEL_SYSTEM_PROMPT, TEMPLATES, _as_text, template_variables

PARALLEL_AGENT_SYSTEM_PROMPT = PARALLEL_SYSTEM_PROMPT
"""System prompt for agents (``FunctionAgent(system_prompt=...)``): the paper's branch instruction
with a worked example (agents take their instructions as a system prompt)."""

PARALLEL_TEXT_QA_TEMPLATE = ChatPromptTemplate(
    message_templates=[
        ChatMessage(role=MessageRole.SYSTEM, content=PARALLEL_SYSTEM_PROMPT),
        ChatMessage(
            role=MessageRole.USER,
            content=(
                "Context information is below.\n"
                "---------------------\n"
                "{context_str}\n"
                "---------------------\n"
                "Given the context information and not prior knowledge, answer the question. "
                "Treat independent parts of the question as separate steps.\n"
                "Question: {query_str}\n"
                "Answer:"
            ),
        ),
    ],
    prompt_type=PromptType.QUESTION_ANSWER,
)
"""``text_qa_template`` for query engines (variables ``context_str``, ``query_str``).

The branch instruction is the system message here, unlike in `branch_template`.
Measured on SmolLM2-135M with a two-part question over two retrieved
documents (greedy): as a system message the model answered both parts
correctly in plain prose; in the user turn it wrote a list of repeated
titles with no bodies. A model that does follow it gets its steps decoded
in parallel either way.
"""

PARALLEL_REFINE_TEMPLATE = ChatPromptTemplate(
    message_templates=[
        ChatMessage(role=MessageRole.SYSTEM, content=PARALLEL_SYSTEM_PROMPT),
        ChatMessage(
            role=MessageRole.USER,
            content=(
                "The original question is: {query_str}\n"
                "The existing answer is: {existing_answer}\n"
                "Refine the existing answer (only if needed) with the new context below.\n"
                "---------------------\n"
                "{context_msg}\n"
                "---------------------\n"
                "Refined answer:"
            ),
        ),
    ],
    prompt_type=PromptType.REFINE,
)
"""``refine_template`` for query engines (``query_str``, ``existing_answer``, ``context_msg``)."""


def branch_template(kind: str = "parallel") -> ChatPromptTemplate:
    """One user message: the shared instructions ``kind``, then ``Question: {query_str}``.

    ``kind`` is a key of `pbd_integrations.prompts.TEMPLATES` (``"parallel"``,
    ``"check_each_item"``, ``"compare_options"``, ``"sub_questions"``,
    ``"plain_reasoning"``); the same prompts as the LangChain adapter's
    `branch_prompt`, with LlamaIndex's ``query_str`` for the question. The
    instructions' own variables (``items``, ``options``, ...) become template
    variables; list values are joined with ``"; "`` as in
    `pbd_integrations.prompts.format_branch_prompt`.

    Raises:
        ValueError: unknown ``kind``.
    """
    variables = template_variables(kind)  # raises ValueError naming the known kinds
    return ChatPromptTemplate(
        message_templates=[
            ChatMessage(role=MessageRole.USER, content=TEMPLATES[kind] + "\n\nQuestion: {query_str}\nAnswer:"),
        ],
        function_mappings={name: _joiner(name) for name in variables},
    )


def _joiner(name: str):
    def join(**kwargs: object) -> str:
        return _as_text(kwargs[name])

    return join


BRANCH_TEMPLATES: dict[str, ChatPromptTemplate] = {kind: branch_template(kind) for kind in TEMPLATES}
"""`branch_template` for every shared template name."""

__all__ = [
    "BRANCH_TEMPLATES",
    "PARALLEL_AGENT_SYSTEM_PROMPT",
    "PARALLEL_REFINE_TEMPLATE",
    "PARALLEL_TEXT_QA_TEMPLATE",
    "branch_template",
]
