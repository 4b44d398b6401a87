"""Both adapters on a decoder that runs on a server (scripted, in process): same answers as in process."""

import threading

import pytest
from fake_completions_server import FakeServer
from scripted_model import ScriptedLM, rules

from pbd_core import ParallelBranchDecoder
from pbd_core.executors.remote import RemoteExecutor
from pbd_integrations.runner import is_remote

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

FRUIT = ["Apples", "Bananas", "Cherries"]
SCRIPT = (
    ("####Apples:", " red.\n####"),
    ("####Bananas:", " long and yellow.\n####"),
    ("####Cherries:", " small.\n####"),
    ("####%%%%", "\nDone."),
    ("assistant:", " Hello."),
)


def remote() -> ParallelBranchDecoder:
    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    return ParallelBranchDecoder.from_executor(
        RemoteExecutor("http://fake:8000", tokenizer=server.tokenizer, **server.transports())
    )


def local() -> ParallelBranchDecoder:
    model = ScriptedLM(rules(*SCRIPT, leak_guard=FRUIT))
    return ParallelBranchDecoder(model, model.tokenizer)


def test_a_server_decoder_is_not_serialised_by_the_adapters():
    assert is_remote(remote()) and not is_remote(local())


def test_langchain_answers_on_a_server_as_in_process():
    from pbd_integrations import ChatParallelBranch

    on_server = ChatParallelBranch(model=remote()).invoke("Q", branches=FRUIT)
    in_process = ChatParallelBranch(model=local()).invoke("Q", branches=FRUIT)
    assert on_server.content == in_process.content and "long and yellow" in on_server.content
    assert on_server.response_metadata["branches"] == in_process.response_metadata["branches"]


async def test_langchain_async_batch_on_a_server_uses_no_threads(monkeypatch):
    from pbd_integrations import ChatParallelBranch

    model = ChatParallelBranch(model=remote())
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name) or start(self))
    answers = await model.abatch(["Q1", "Q2", "Q3"], branches=FRUIT)
    chunks = [chunk async for chunk in model.astream("Q", branches=FRUIT)]
    assert started == []
    assert len({a.content for a in answers}) == 1 and "Done." in answers[0].content
    assert "".join(c.content for c in chunks) == answers[0].content


async def test_llama_index_chats_on_a_server_as_in_process():
    from llama_index.core.llms import ChatMessage

    from pbd_integrations import ParallelBranchLLM

    messages = [ChatMessage(role="user", content="Q")]
    on_server = await ParallelBranchLLM(model=remote()).achat(messages, branches=FRUIT)
    in_process = ParallelBranchLLM(model=local()).chat(messages, branches=FRUIT)
    assert on_server.message.content == in_process.message.content


def test_base_url_fields_name_a_server(monkeypatch):
    from pbd_integrations import ChatParallelBranch, ParallelBranchLLM
    from pbd_integrations import registry

    calls = []
    monkeypatch.setattr(registry, "get_remote_decoder", lambda url, **kw: calls.append((url, kw)) or remote())
    import pbd_integrations.langchain.chat_models as lc
    import pbd_integrations.llama_index.base as li

    monkeypatch.setattr(lc, "get_remote_decoder", registry.get_remote_decoder)
    monkeypatch.setattr(li, "get_remote_decoder", registry.get_remote_decoder)
    ChatParallelBranch(base_url="http://gpu-box:8000/v1", api_key="k").decoder
    ParallelBranchLLM(base_url="http://gpu-box:8000/v1", model="Qwen/Qwen2.5-7B-Instruct").decoder
    assert calls == [
        ("http://gpu-box:8000/v1", {"model": None, "api_key": "k", "timeout": 600.0}),
        ("http://gpu-box:8000/v1", {"model": "Qwen/Qwen2.5-7B-Instruct", "api_key": None, "timeout": 600.0}),
    ]
