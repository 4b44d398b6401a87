"""`ParallelBranchLLM` on the real default model (SmolLM2-135M, greedy, short answers)."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


def test_metadata_reads_the_model_config(llm):
    config = llm.decoder.model.config
    assert llm.metadata.context_window == config.max_position_embeddings == 8192
    assert llm.metadata.model_name == "SmolLM2-135M-Instruct"
    assert llm.metadata.num_output == 32


def test_instances_share_one_decoder_with_each_other_and_the_langchain_model(llm):
    from pbd_integrations.llama_index import ParallelBranchLLM

    assert ParallelBranchLLM(temperature=0.5).decoder is llm.decoder
    langchain = pytest.importorskip("pbd_integrations.langchain")
    assert langchain.ChatParallelBranch().decoder is llm.decoder


@pytest.mark.parametrize("branches", [None, ["Cats", "Dogs"]], ids=["plain", "branches"])
def test_stream_text_equals_complete_text(llm, branches):
    prompt = "Compare cats and dogs as pets in one sentence each."
    options = {"branches": branches, "max_tokens": 12, "max_branch_tokens": 5}
    completion = llm.complete(prompt, **options)
    chunks = list(llm.stream_complete(prompt, **options))
    assert completion.text
    assert "".join(c.delta for c in chunks) == chunks[-1].text == completion.text
    titles = [b["title"] for b in completion.raw["branches"]]
    if branches:
        assert titles == branches
        assert completion.raw["parallel"] is True
        assert completion.text.startswith("**Cats**") and completion.raw["raw_text"].startswith("####Cats:")


def test_usage_counts_equal_the_tokenizer_counts(llm):
    decoder = llm.decoder
    counter = TokenCountingHandler(tokenizer=lambda text: decoder.tokenizer.encode(text, add_special_tokens=False))
    llm.callback_manager = CallbackManager([counter])
    try:
        response = llm.chat([ChatMessage(role=MessageRole.USER, content=QUESTION)], parallel=False)
    finally:
        llm.callback_manager = CallbackManager([])
    usage = response.raw["usage"]
    rendered = decoder.render_messages([{"role": "user", "content": QUESTION}])
    assert usage["prompt_tokens"] == decoder.count_tokens(rendered)
    assert usage["completion_tokens"] == decoder.count_tokens(response.message.content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    (event,) = counter.llm_token_counts
    assert (event.prompt_token_count, event.completion_token_count) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


async def test_async_answers_equal_the_sync_ones(llm):
    messages = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
    sync = llm.chat(messages, max_new_tokens=12)
    asynchronous = await llm.achat(messages, max_new_tokens=12)
    deltas = [c.delta async for c in await llm.astream_chat(messages, max_new_tokens=12)]
    assert asynchronous.message.content == sync.message.content == "".join(deltas)


def test_required_tool_call_is_decoded_under_the_grammar(llm):
    tool = FunctionTool.from_defaults(fn=add)
    response = llm.chat_with_tools([tool], user_msg="What is 2 plus 3?", tool_required=True, max_tokens=64)
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert block.tool_name == "add"
    assert set(block.tool_kwargs) == {"a", "b"}
    assert all(isinstance(v, int) for v in block.tool_kwargs.values())
    assert response.raw["finish_reason"] == "stop"
    (selection,) = llm.get_tool_calls_from_response(response)
    assert tool(**selection.tool_kwargs).raw_output == block.tool_kwargs["a"] + block.tool_kwargs["b"]


def test_structured_predict_returns_the_pydantic_model(llm):
    prompt = PromptTemplate("Name the capital city of {country}.")
    city = llm.structured_predict(City, prompt, llm_kwargs={"max_tokens": 64}, country="France")
    assert isinstance(city, City)
    assert city.name and city.country


async def test_structured_llm_returns_the_pydantic_model(llm):
    structured = llm.as_structured_llm(City)
    response = await structured.acomplete("Name the capital city of France.", max_tokens=64)
    assert isinstance(response.raw, City)
    assert City.model_validate_json(response.text) == response.raw
