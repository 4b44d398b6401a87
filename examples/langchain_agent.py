"""An agent loop with two tools that the model really calls.

The model sees the tools through its prompt and answers with tool calls
decoded under a grammar, so even the 135M default model writes calls whose
arguments always match the tools' schemas. The loop runs each call, feeds
the result back as a ToolMessage and asks again, until the model calls
``final_answer``. (The ``langchain`` package's ``create_agent`` drives the
same model the same way; it is not needed here.)

    python examples/langchain_agent.py
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from pbd_integrations import ChatParallelBranch


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def final_answer(answer: int) -> int:
    """Give the final answer (a number) to the user."""
    return answer


TOOLS = {t.name: t for t in (add, multiply, final_answer)}


def run_agent(question: str, *, max_steps: int = 4) -> list[BaseMessage]:
    # "any" forces a tool call every turn; the model ends the loop with final_answer.
    # A mild repetition penalty keeps the tiny model from looping inside its JSON.
    llm = ChatParallelBranch(max_tokens=80, repetition_penalty=1.3).bind_tools(list(TOOLS.values()), tool_choice="any")
    messages: list[BaseMessage] = [
        SystemMessage("Use the add and multiply tools for arithmetic, then call final_answer."),
        HumanMessage(question),
    ]
    for _ in range(max_steps):
        reply = llm.invoke(messages)
        messages.append(reply)
        for call in reply.tool_calls:
            result = TOOLS[call["name"]].invoke(call)  # a ToolMessage with the call's id
            print(f"-> {call['name']}({call['args']}) = {result.content}")
            messages.append(result)
            if call["name"] == "final_answer":
                return messages
    return messages


def main() -> None:
    messages = run_agent("Compute (12 + 30) * 2 with the tools.")
    calls = [m for m in messages if isinstance(m, ToolMessage)]
    print(f"\n{len(calls)} tool calls; tools used: {sorted({m.name for m in calls})}")


if __name__ == "__main__":
    main()
