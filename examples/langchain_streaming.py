"""Watch branches grow side by side while the answer streams in reading order.

Every token of every branch arrives as a LangChain custom event
(``pbd_branch_token``) through ``astream_events``; the message itself streams
in reading order (first branch live, the others as soon as the ones before
them end).

    python examples/langchain_streaming.py
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap

from pbd_integrations import ChatParallelBranch
from pbd_integrations.langchain import BRANCH_END_EVENT, BRANCH_START_EVENT, BRANCH_TOKEN_EVENT

TITLES = ["Cats", "Dogs", "Parrots"]


def columns(texts: dict[int, str], titles: dict[int, str], done: set[int]) -> str:
    """The branches as side-by-side columns."""
    width = max(20, shutil.get_terminal_size((100, 20)).columns // max(len(titles), 1) - 3)
    wrapped = {i: textwrap.wrap(texts.get(i, "").replace("\n", " "), width) or [""] for i in titles}
    height = max(len(lines) for lines in wrapped.values())
    header = " | ".join(f"{titles[i] + (' (done)' if i in done else ''):<{width}}" for i in titles)
    rows = [" | ".join(f"{(wrapped[i][r] if r < len(wrapped[i]) else ''):<{width}}" for i in titles) for r in range(height)]
    return "\n".join([header, "-" * len(header), *rows])


async def main() -> None:
    llm = ChatParallelBranch(max_tokens=80, max_branch_tokens=20, repetition_penalty=1.3)
    titles: dict[int, str] = {}
    texts: dict[int, str] = {}
    done: set[int] = set()
    answer = ""
    live = sys.stdout.isatty()
    tokens = 0
    async for event in llm.astream_events("Describe each pet in one sentence.", version="v2", branches=TITLES):
        kind, name, data = event["event"], event.get("name"), event.get("data", {})
        if kind == "on_custom_event" and name == BRANCH_START_EVENT:
            titles[data["branch"]] = data["title"]
        elif kind == "on_custom_event" and name == BRANCH_TOKEN_EVENT:
            texts[data["branch"]] = texts.get(data["branch"], "") + data["text"]
            tokens += 1
            if live:
                print("\033[H\033[J" + columns(texts, titles, done), flush=True)
            elif tokens % 15 == 0:
                print(f"... {tokens} branch tokens: " + ", ".join(f"{titles[i]}={len(t)} chars" for i, t in texts.items()))
        elif kind == "on_custom_event" and name == BRANCH_END_EVENT:
            done.add(data["branch"])
        elif kind == "on_chat_model_stream":
            answer += event["data"]["chunk"].text
    print("\n" + columns(texts, titles, done))
    print("\nThe answer in reading order:\n" + answer)


if __name__ == "__main__":
    asyncio.run(main())
