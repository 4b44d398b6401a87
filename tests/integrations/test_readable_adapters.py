"""What the user reads, through every adapter: readable content by default, the branch format on request.

One scripted answer (the LangChain fake's events: an intro, three interleaved
branches, the close marker, a conclusion) goes through LangChain, LlamaIndex
and ``pbd serve``: the content has no ``####``/``%%%%``, streaming adds up to
the non-streamed content, the raw option gives the old text exactly, and the
per-branch events still carry the branch format. Then a real tiny model
(`tests/tiny_models.py`) through LangChain and the engine, and the real engine
on a scripted model whose ``####`` opens no plan (left out of the content).
"""

from __future__ import annotations

import asyncio

import pytest
from chat_template_fakes import ChatDecoder

from pbd_core.readable import render

BRANCHES = {"Cats": [" purr", " a", " lot"], "Dogs": [" bark"], "Fish": [" swim", " quietly"]}
RAW = "Plan:####Cats: purr a lot####Dogs: bark####Fish: swim quietly####%%%%Both fine."
READABLE = "Plan:\n\n**Cats**\n\npurr a lot\n\n**Dogs**\n\nbark\n\n**Fish**\n\nswim quietly\n\nBoth fine."


def branchy() -> ChatDecoder:
    return ChatDecoder(before=["Plan:"], branches=dict(BRANCHES), after=["Both", " fine."])


def test_expected_readable_text_is_the_rendering_of_the_structure() -> None:
    blocks = [(title, "".join(words)) for title, words in BRANCHES.items()]
    assert render(["Plan:", blocks, "Both fine."]) == READABLE


# --------------------------------------------------------------------------- LangChain


def test_langchain_content_is_readable_and_streams_the_same() -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    llm = ChatParallelBranch(model=branchy())
    message = llm.invoke("Compare pets.")
    assert message.content == READABLE
    assert "####" not in message.content and "%%%%" not in message.content
    assert message.response_metadata["raw_text"] == RAW
    assert "".join(chunk.content for chunk in llm.stream("Compare pets.")) == message.content

    async def astream() -> str:
        return "".join([chunk.content async for chunk in llm.astream("Compare pets.")])

    assert asyncio.run(astream()) == message.content


def test_langchain_raw_output_is_the_old_text_exactly() -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    raw = ChatParallelBranch(model=branchy(), output_format="raw")
    assert raw.invoke("Compare pets.").content == RAW
    assert "".join(chunk.content for chunk in raw.stream("Compare pets.")) == RAW
    per_call = ChatParallelBranch(model=branchy()).invoke("Compare pets.", output_format="raw")
    assert per_call.content == RAW and per_call.response_metadata["raw_text"] == RAW
    with pytest.raises(ValueError, match="output_format"):
        ChatParallelBranch(model=branchy()).invoke("Compare pets.", output_format="html")


def test_langchain_branch_events_keep_the_branch_format() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.callbacks import BaseCallbackHandler

    from pbd_integrations import ChatParallelBranch
    from pbd_integrations.langchain import BRANCH_TOKEN_EVENT

    class Log(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, dict]] = []

        def on_custom_event(self, name, data, **kwargs) -> None:
            self.events.append((name, data))

    log = Log()
    ChatParallelBranch(model=branchy()).invoke("Compare pets.", config={"callbacks": [log]})
    cats = "".join(d["text"] for n, d in log.events if n == BRANCH_TOKEN_EVENT and d["branch"] == 0)
    assert cats == "####Cats: purr a lot"


def test_langchain_readable_answer_fed_back_is_just_text() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage

    from pbd_integrations import ChatParallelBranch

    decoder = branchy()
    llm = ChatParallelBranch(model=decoder)
    first = llm.invoke("Compare pets.")
    second = llm.invoke([HumanMessage("Compare pets."), AIMessage(first.content), HumanMessage("And birds?")])
    prompt = decoder.calls[-1][0].text
    assert f"<|im_start|>assistant\n{READABLE}<|im_end|>" in prompt
    assert second.content == READABLE


def test_langchain_plain_and_json_answers_are_unchanged() -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    plain = ChatParallelBranch(model=ChatDecoder(before=["Hello", " #### world:", " %%%%"]))
    assert plain.invoke("Hi").content == "Hello #### world: %%%%"  # the model's own text is kept
    answer = '{"name": "Rex", "sound": "####woof: %%%%"}'
    structured = ChatParallelBranch(model=ChatDecoder(before=[answer]))
    assert structured.invoke("Hi").content == answer


# --------------------------------------------------------------------------- LlamaIndex


def test_llama_index_content_is_readable_and_streams_the_same() -> None:
    pytest.importorskip("llama_index.core")
    from pbd_integrations import ParallelBranchLLM

    llm = ParallelBranchLLM(model=branchy())
    response = llm.complete("Compare pets.")
    assert response.text == READABLE
    assert response.raw["raw_text"] == RAW
    chat = llm.chat([_li_message("Compare pets.")])
    assert chat.message.content == READABLE
    assert "".join(r.delta for r in llm.stream_complete("Compare pets.")) == READABLE
    assert "".join(r.delta for r in llm.stream_chat([_li_message("Compare pets.")])) == READABLE

    async def astream() -> str:
        return "".join([r.delta async for r in await llm.astream_complete("Compare pets.")])

    assert asyncio.run(astream()) == READABLE


def test_llama_index_raw_output_is_the_old_text_exactly() -> None:
    pytest.importorskip("llama_index.core")
    from pbd_integrations import ParallelBranchLLM

    assert ParallelBranchLLM(model=branchy(), output_format="raw").complete("Compare pets.").text == RAW
    assert ParallelBranchLLM(model=branchy()).complete("Compare pets.", output_format="raw").text == RAW


def _li_message(text: str):
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    return ChatMessage(role=MessageRole.USER, content=text)


# --------------------------------------------------------------------------- pbd serve


def _sse_content(text: str) -> str:
    import json

    content = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[len("data: "):])["choices"]:
                content.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(content)


def test_server_content_is_readable_streams_the_same_and_raw_on_request() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pbd_integrations.server import create_app

    client = TestClient(create_app(branchy()))
    request = {"messages": [{"role": "user", "content": "Compare pets."}]}
    body = client.post("/v1/chat/completions", json=request).json()
    assert body["choices"][0]["message"]["content"] == READABLE
    streamed = client.post("/v1/chat/completions", json={**request, "stream": True})
    assert _sse_content(streamed.text) == READABLE
    assert '"text": "####Cats:"' in streamed.text  # branch progress still carries the branch format

    raw = client.post("/v1/chat/completions", json={**request, "output_format": "raw"}).json()
    assert raw["choices"][0]["message"]["content"] == RAW
    raw_stream = client.post("/v1/chat/completions", json={**request, "output_format": "raw", "stream": True})
    assert _sse_content(raw_stream.text) == RAW

    completion = client.post("/v1/completions", json={"prompt": "Compare pets.", "branches": ["Cats"]}).json()
    assert completion["choices"][0]["text"] == READABLE
    bad = client.post("/v1/chat/completions", json={**request, "output_format": "html"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "output_format"


def test_server_protocol_chunks_add_up_to_the_aggregate() -> None:
    pytest.importorskip("fastapi")
    from pbd_integrations.server import protocol

    for output_format, expected in (("readable", READABLE), ("raw", RAW)):
        chunks = protocol.ChatChunks("m", output_format=output_format)
        out = chunks.start() + [c for e in branchy().stream("Compare pets.") for c in chunks.feed(e)]
        deltas = "".join(c["choices"][0]["delta"].get("content") or "" for c in out if c["choices"])
        assert deltas == protocol.aggregate_chat(out)["choices"][0]["message"]["content"] == expected


# --------------------------------------------------------------------------- a real (tiny) model


@pytest.fixture(scope="module")
def tiny_decoder():
    pytest.importorskip("langchain_core")
    from tiny_models import byte_tokenizer, tiny_model

    from pbd_core import ParallelBranchDecoder

    return ParallelBranchDecoder(tiny_model("llama"), byte_tokenizer())


def test_tiny_model_through_langchain(tiny_decoder) -> None:
    from pbd_integrations import ChatParallelBranch

    options = dict(branches=["Tea", "Coffee: hot"], max_tokens=40, max_branch_tokens=8)
    llm = ChatParallelBranch(model=tiny_decoder)
    message = llm.invoke("Compare tea and coffee.", **options)
    raw = message.response_metadata["raw_text"]
    assert raw.startswith("####Tea:") and "####Coffee： hot:" in raw
    assert message.content.startswith("**Tea**") and "**Coffee: hot**" in message.content
    assert "####" not in message.content and "%%%%" not in message.content
    assert "".join(chunk.content for chunk in llm.stream("Compare tea and coffee.", **options)) == message.content
    from pbd_core import RawPrompt

    prompt = RawPrompt(tiny_decoder.render_messages([{"role": "user", "content": "Compare tea and coffee."}]))
    engine = tiny_decoder.generate(prompt, branches=options["branches"], max_new_tokens=40, max_branch_tokens=8)
    assert engine.text == message.content and engine.raw_text == raw
    assert llm.invoke("Compare tea and coffee.", output_format="raw", **options).content == raw


# --------------------------------------------------------------------------- a '####' that opened no plan


def marker_first_decoder():
    """The real engine on a scripted model that opens its direct answer with the marker and no title
    (what Qwen2.5-Coder-0.5B did on word problems: ``####Mia has 79 dollars. ...``)."""
    from scripted_model import ScriptedLM, rules

    from pbd_core import ParallelBranchDecoder

    model = ScriptedLM(rules(("assistant:", "####Mia has 9 dollars.\nShe has 9 now.")))
    return ParallelBranchDecoder(model, model.tokenizer)


def test_a_marker_that_opened_no_plan_is_not_in_the_content() -> None:
    pytest.importorskip("langchain_core")
    from pbd_integrations import ChatParallelBranch

    llm = ChatParallelBranch(model=marker_first_decoder(), max_tokens=60)
    message = llm.invoke("How many dollars has Mia?")
    assert message.content == "Mia has 9 dollars.\nShe has 9 now."
    assert message.response_metadata["raw_text"] == "####Mia has 9 dollars.\nShe has 9 now."
    assert "".join(chunk.content for chunk in llm.stream("How many dollars has Mia?")) == message.content
    assert llm.invoke("How many dollars has Mia?", output_format="raw").content.startswith("####Mia")


def test_llama_index_leaves_it_out_too() -> None:
    pytest.importorskip("llama_index.core")
    from pbd_integrations.llama_index import ParallelBranchLLM

    llm = ParallelBranchLLM(model=marker_first_decoder(), max_tokens=60)
    assert llm.complete("How many dollars has Mia?").text == "Mia has 9 dollars.\nShe has 9 now."
    assert "".join(r.delta for r in llm.stream_complete("How many dollars has Mia?")) == "Mia has 9 dollars.\nShe has 9 now."
