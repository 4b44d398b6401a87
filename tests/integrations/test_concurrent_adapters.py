"""Concurrent adapter calls share the decoder's forward passes and answer as they would alone.

LangChain's ``batch``/``abatch`` and concurrent ``ainvoke``, and LlamaIndex's async chat, on
one in-process decoder (the default model in fp32, where batched greedy decoding is exact):
the answers equal the ones given one call at a time, and the batch takes far fewer forward
passes than the calls did one by one (no per-decoder lock any more).
"""

from __future__ import annotations

import asyncio

import pytest

from pbd_core import ParallelBranchDecoder

pytestmark = pytest.mark.slow

QUESTIONS = ["Name a color.", "What is 3 + 4?", "Say hello in French.", "Name a planet."]


@pytest.fixture(scope="module")
def decoder() -> ParallelBranchDecoder:
    return ParallelBranchDecoder.from_pretrained("default", dtype="float32")


def test_langchain_batch_and_abatch_are_batched_and_exact(decoder) -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    llm = ChatParallelBranch(model=decoder, max_tokens=12)
    before = decoder.scheduler.steps
    alone = [llm.invoke(q).content for q in QUESTIONS]
    steps_alone = decoder.scheduler.steps - before

    before = decoder.scheduler.steps
    together = [m.content for m in llm.batch(QUESTIONS, config={"max_concurrency": len(QUESTIONS)})]
    steps_together = decoder.scheduler.steps - before
    assert together == alone
    assert steps_together < 0.6 * steps_alone, (steps_together, steps_alone)

    async def gathered():
        return await asyncio.gather(*(llm.ainvoke(q) for q in QUESTIONS))

    assert [m.content for m in asyncio.run(gathered())] == alone
    assert [m.content for m in asyncio.run(llm.abatch(QUESTIONS))] == alone
    assert decoder.scheduler.stats()["active"] == 0


def test_langchain_branch_calls_batch_with_plain_calls(decoder) -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    plain = ChatParallelBranch(model=decoder, max_tokens=12)
    branched = ChatParallelBranch(model=decoder, max_tokens=40, max_branch_tokens=8).bind(branches=["Tea", "Coffee"])
    expected = [plain.invoke(QUESTIONS[0]).content, branched.invoke("Compare tea and coffee.").content]

    async def both():
        return await asyncio.gather(plain.ainvoke(QUESTIONS[0]), branched.ainvoke("Compare tea and coffee."))

    assert [m.content for m in asyncio.run(both())] == expected


def test_llama_index_async_chat_is_batched_and_exact(decoder) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage

    from pbd_integrations import ParallelBranchLLM

    llm = ParallelBranchLLM(model=decoder, max_tokens=12)
    alone = [llm.chat([ChatMessage(role="user", content=q)]).message.content for q in QUESTIONS]
    before = decoder.scheduler.steps

    async def gathered():
        return await asyncio.gather(*(llm.achat([ChatMessage(role="user", content=q)]) for q in QUESTIONS))

    together = [r.message.content for r in asyncio.run(gathered())]
    assert together == alone
    assert decoder.scheduler.steps - before < 0.6 * sum(1 for _ in QUESTIONS) * 12
