"""A LlamaIndex `FunctionAgent` on the parallel-branch decoder, fully offline.

The agent streams its events: the tool call (decoded under a JSON grammar, so
its arguments always validate), the tool's result, and the answer written
from it. SmolLM2-135M rarely decides to call a tool on its own, so the first
call is forced with ``initial_tool_choice``; with ``model="qwen2.5-coder-0.5b"``
the model chooses by itself. The last part extracts a pydantic object with
``structured_predict``.

    pip install -e ".[llama-index,grammar]"
    python examples/llamaindex_agent.py
"""

from __future__ import annotations

import asyncio
import time

from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCall, ToolCallResult
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel

from pbd_integrations import ParallelBranchLLM

STOCK = {"apples": 12, "pears": 0, "plums": 7}


def check_stock(item: str) -> str:
    """Return how many units of a fruit (apples, pears or plums) are in stock."""
    name = item.strip().lower().rstrip("s") + "s"  # "apple" and "apples" alike
    count = STOCK.get(name)
    return f"{count} {name} in stock" if count is not None else f"unknown item {item!r}"


class Order(BaseModel):
    """A fruit order."""

    item: str
    quantity: int


async def main() -> None:
    start = time.perf_counter()
    llm = ParallelBranchLLM(max_tokens=48)
    agent = FunctionAgent(
        tools=[check_stock],
        llm=llm,
        initial_tool_choice="check_stock",
        system_prompt="You are a shop assistant. Answer from the tool's result.",
    )
    handler = agent.run("How many apples are in stock?")
    async for event in handler.stream_events():
        if isinstance(event, ToolCall) and not isinstance(event, ToolCallResult):
            print(f"-> call {event.tool_name}({event.tool_kwargs})")
        elif isinstance(event, ToolCallResult):
            print(f"<- result {event.tool_output.content!r}")
        elif isinstance(event, AgentStream):
            print(event.delta, end="", flush=True)
    answer = await handler
    print(f"\nanswer: {str(answer).strip()}")

    order = llm.structured_predict(Order, PromptTemplate("Extract the order: {text}"), text="Please send me 3 plums.")
    print(f"\nstructured_predict -> {order!r}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
