"""Parallel-branch decoding on a real vLLM server (started by scripts/vllm_server.py).

The server holds the default model's fp32 snapshot. What is exact remotely is
stated in the server's own terms: a branch is the server's plain greedy
completion of that branch's context alone.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from pydantic import BaseModel, Field

from pbd_core import ParallelBranchDecoder
from pbd_core.executors.remote import RemoteExecutorError
from pbd_integrations.bench.remote import _complete_all, _plain_body, _token_ids, branch_exactness

pytestmark = pytest.mark.server

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
QUESTION = [{"role": "user", "content": "Write one fact about each planet of the solar system."}]


@pytest.fixture(scope="module")
def decoder(vllm_server_url) -> ParallelBranchDecoder:
    return ParallelBranchDecoder.from_server(f"{vllm_server_url}/v1")


def test_caller_branches_are_decoded_and_merged_on_the_server(decoder):
    result = decoder.generate(QUESTION, branches=PLANETS[:3], max_branch_tokens=24, max_new_tokens=120)
    assert result.parallel and [b.title for b in result.branches] == PLANETS[:3]
    assert all(b.text.strip() and b.token_ids for b in result.branches)
    assert result.raw_text.startswith("####Mercury:") and "####%%%%\n" in result.raw_text
    assert result.text.startswith("**Mercury**\n\n") and "####" not in result.text  # readable by default
    assert result.stats.generated_tokens <= 120


def test_model_planned_branches_on_the_server(decoder):
    result = decoder.generate(QUESTION, force_plan=True, max_branches=4, max_new_tokens=200, max_branch_tokens=24)
    first_block = [b for b in result.branches if b.block == 0]
    assert result.parallel and 2 <= len(first_block) <= 4, result.text
    assert all(b.title.strip() and b.token_ids for b in first_block)
    assert len({b.title for b in first_block}) == len(first_block)


def test_each_greedy_branch_is_the_servers_own_completion_of_its_context(decoder):
    result = decoder.generate(QUESTION, branches=PLANETS[:4], max_branch_tokens=24, max_new_tokens=200)
    assert branch_exactness(decoder, result) == [True] * 4


def test_eight_branches_finish_far_faster_than_one_after_another(decoder):
    result = decoder.generate(QUESTION, branches=PLANETS, max_branch_tokens=32, max_new_tokens=400)
    parallel_seconds = result.stats.stage_seconds["parallel"]
    executor = decoder.executor
    bodies = [_plain_body(executor, b.context_ids, max(1, len(b.token_ids))) for b in result.branches]
    one_by_one, choices = asyncio.run(_complete_all(executor, bodies, concurrent=False))
    assert sum(len(_token_ids(c)) for c in choices) >= sum(len(b.token_ids) for b in result.branches) - 8
    speedup = one_by_one / parallel_seconds
    print(f"8 branches: one after another {one_by_one:.2f} s, parallel stage {parallel_seconds:.2f} s: {speedup:.2f}x")
    assert speedup >= 2.5


async def test_async_decoding_on_the_server_matches_sync(decoder):
    sync = decoder.generate(QUESTION, branches=PLANETS[:2], max_branch_tokens=16, max_new_tokens=80)
    result = await decoder.agenerate(QUESTION, branches=PLANETS[:2], max_branch_tokens=16, max_new_tokens=80)
    assert result.text == sync.text


def test_tool_calls_through_the_servers_guided_decoding(vllm_server_url):
    from langchain_core.tools import tool

    from pbd_integrations import ChatParallelBranch

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    llm = ChatParallelBranch(base_url=f"{vllm_server_url}/v1", temperature=0)
    message = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)


def test_structured_output_through_the_servers_guided_decoding(vllm_server_url):
    from pbd_integrations import ChatParallelBranch

    class Capital(BaseModel):
        country: str = Field(description="the country")
        city: str = Field(description="its capital city")

    llm = ChatParallelBranch(base_url=f"{vllm_server_url}/v1", temperature=0, max_tokens=64)
    answer = llm.with_structured_output(Capital).invoke("What is the capital of France?")
    assert isinstance(answer, Capital) and answer.city


def test_a_wrong_model_name_is_a_clear_error(vllm_server_url):
    with pytest.raises(RemoteExecutorError, match="does not serve model 'no-such-model'"):
        ParallelBranchDecoder.from_server(f"{vllm_server_url}/v1", model="no-such-model")


def test_a_prompt_longer_than_the_servers_context_is_refused_before_decoding(decoder):
    with pytest.raises(ValueError, match="context window is 2048 tokens"):
        decoder.generate("word " * 3000)


def test_a_stopped_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(RemoteExecutorError, match=f"cannot reach the server at http://127.0.0.1:{port}"):
        ParallelBranchDecoder.from_server(f"http://127.0.0.1:{port}/v1", timeout=10)
    assert time.perf_counter() - started < 10
