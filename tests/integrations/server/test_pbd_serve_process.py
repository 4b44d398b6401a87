"""A real ``pbd serve`` process on 127.0.0.1, the default model, and real clients.

One process is started for the module (``pbd serve --model default --dtype float32
--port 0``: a free port, read from the URL it prints) and exercised over HTTP by the
official ``openai`` client (sync and async, stream and not, tools, json_schema),
LangChain's ``ChatOpenAI``, LlamaIndex's ``OpenAILike``, our own remote executor
(``ParallelBranchDecoder.from_server``, whose answer must equal the in-process one),
bad requests, a client that disconnects mid-stream, and engine extension fields
(``single_title_plans``, ``nonempty_branches``) on prompts where they change the answer.
Budgets are a few tokens: the machine is a shared CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

MODEL = "default"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}
START_TIMEOUT = 600  # seconds: imports and the model load on a busy shared CPU
BANNER: list[str] = []  # what the process printed on stdout
PROCESS: dict[str, int] = {}  # the server's pid


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """``pbd serve`` in its own process; yields its ``/v1`` URL, stops it afterwards."""
    logs = tmp_path_factory.mktemp("pbd-serve")
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    command = [sys.executable, "-m", "pbd_integrations", "serve", "--model", MODEL, "--dtype", "float32",
               "--host", "127.0.0.1", "--port", "0"]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=Path(__file__).parents[3],
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = _wait_for_url(process, out, err)
        PROCESS["pid"] = process.pid
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen, out: Path, err: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pbd serve exited with {process.returncode}:\n{err.read_text()[-3000:]}")
        for line in out.read_text().splitlines():
            if line.startswith("pbd serve:") and " at http://" in line:
                url = line.split(" at ", 1)[1].strip()
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=10).status_code == 200:
                    BANNER[:] = out.read_text().splitlines()
                    return url
        time.sleep(0.5)
    pytest.fail(f"pbd serve printed no URL within {START_TIMEOUT} s:\n{err.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def client(server: str):
    return openai.OpenAI(base_url=server, api_key="unused", timeout=300, max_retries=0)


def root(server: str) -> str:
    return server.removesuffix("/v1")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- the official openai client


def test_the_banner_and_the_model_card(server: str, client) -> None:
    assert f'OpenAI(base_url="{server}", api_key="unused")' in "\n".join(BANNER)
    assert f'ChatOpenAI(base_url="{server}"' in "\n".join(BANNER)
    [model] = client.models.list().data
    card = model.model_dump()
    assert card["id"] == "SmolLM2-135M-Instruct" and card["max_model_len"] == 8192
    assert Path(card["root"], "tokenizer.json").is_file()  # the remote executor loads the tokenizer from it
    health = httpx.get(root(server) + "/health").json()
    assert health["status"] == "ok" and health["model"] == "SmolLM2-135M-Instruct"


def test_chat_sync_non_stream_with_usage(client) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=ask("Say hello."), max_tokens=6)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_chat_sync_stream_with_branches_progress_and_usage(client) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ask("Compare tea and coffee."), max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"branches": ["Tea", "Coffee"], "max_branch_tokens": 4},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("**Tea**\n\n") and "\n\n**Coffee**" in text and "####" not in text and "%%%%" not in text
    progress = [c.model_extra["pbd"] for c in chunks if c.model_extra and "pbd" in c.model_extra]
    assert {p["title"] for p in progress if p["event"] == "branch_start"} == {"Tea", "Coffee"}
    assert any(p["event"] == "branch_token" and p["branch"] == 1 for p in progress)
    final = next(p for p in progress if p["event"] == "final")
    assert final["parallel"] is True and [b["title"] for b in final["branches"]] == ["Tea", "Coffee"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == final["stats"]["generated_tokens"]


async def test_chat_async_stream_and_non_stream(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=server, api_key="unused", timeout=300, max_retries=0)
    whole = await client.chat.completions.create(model=MODEL, messages=ask("Name a color."), max_tokens=5)
    stream = await client.chat.completions.create(model=MODEL, messages=ask("Name a color."), max_tokens=5, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content  # greedy: the same answer both ways
    await client.close()


async def test_concurrent_requests_all_complete(server: str) -> None:
    import asyncio

    client = openai.AsyncOpenAI(base_url=server, api_key="unused", timeout=300, max_retries=0)

    async def streamed(text: str) -> str:
        stream = await client.chat.completions.create(model=MODEL, messages=ask(text), max_tokens=3, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def whole(text: str) -> str:
        answer = await client.chat.completions.create(model=MODEL, messages=ask(text), max_tokens=3)
        return answer.choices[0].message.content

    answers = await asyncio.gather(streamed("Red?"), whole("Red?"), streamed("Blue?"), whole("Blue?"))
    assert answers[0] == answers[1] and answers[2] == answers[3] and all(answers)
    await client.close()


def test_tools_come_back_as_tool_calls(client) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=ask("What is the weather in Paris?"), tools=[WEATHER_TOOL], tool_choice="required",
        max_tokens=40,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_json_schema_response_format(client) -> None:
    schema = {"type": "object", "properties": {"hot": {"type": "boolean"}}, "required": ["hot"]}
    answer = client.chat.completions.create(
        model=MODEL, messages=ask("Is the sun hot?"), max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema}},
    )
    assert isinstance(json.loads(answer.choices[0].message.content)["hot"], bool)


def test_completions_with_a_string_and_with_token_ids(client, server: str) -> None:
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    ids = httpx.post(root(server) + "/tokenize", json={"prompt": "The capital of France is"}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, extra_body={"return_token_ids": True})
    assert text.choices[0].text == by_ids.choices[0].text and text.choices[0].finish_reason == "length"
    sampled = by_ids.choices[0].model_extra["token_ids"]
    assert len(sampled) == 4
    assert httpx.post(root(server) + "/detokenize", json={"tokens": sampled}).json()["prompt"] == text.choices[0].text


def test_bad_requests_get_openai_errors_naming_the_field(client) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=ask("x"), temperature=-1)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=ask("x"), extra_body={"branches": ["a", " "]})
    assert bad.value.body["param"] == "branches" and "branch title 1 is only whitespace" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=ask("x"))
    assert missing.value.body["code"] == "model_not_found"
    assert client.chat.completions.create(model=MODEL, messages=ask("Hi."), max_tokens=2).choices  # still serving


def test_a_client_that_disconnects_mid_stream_stops_its_decode(server: str, client) -> None:
    body = {"model": MODEL, "messages": ask("Write a very long story."), "max_tokens": 4000, "stream": True,
            "parallel": False}
    served = httpx.get(root(server) + "/health").json()["served"]
    with httpx.Client(timeout=300) as http:
        with http.stream("POST", server + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = 0
            for line in response.iter_lines():
                lines += line.startswith("data: ")
                if lines >= 4:
                    break  # leaving the block closes the connection
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # 4000 tokens would take many minutes here
        health = httpx.get(root(server) + "/health").json()
        if health["active_decodes"] == 0 and health["served"] > served:
            break
        time.sleep(0.2)
    assert health["active_decodes"] == 0 and health["served"] == served + 1
    assert client.chat.completions.create(model=MODEL, messages=ask("Hi."), max_tokens=2).choices[0].message.content


# --------------------------------------------------------------------------- engine options over HTTP

# Prompts on which the served model (SmolLM2-135M, greedy, float32) triggers the two token masks, found by
# decoding them in process: a raw text completion with ``parallel`` set, read in ``output_format="raw"``.
ONE_TITLE_PROMPT = (
    "Task: write a haiku about rain.\n####Haiku: ...\n####%%%%\n####Haiku: Soft rain falls on leaves.\n####%%%%\nDone.\n\n"
    "Task: write a haiku about snow.\n####Haiku: ...\n####%%%%\n####Haiku: White snow covers all.\n####%%%%\nDone.\n\n"
    "Task: write a haiku about wind.\n"
)  # the model plans "####Haiku: ...", then closes the list with "%%%%": a list of one title
EMPTY_STEPS_PROMPT = "Fill in nothing.\n####Milk:\n####Bread:\n####Eggs:\n####Butter:\n"
# every step of the examples is empty: the model answers "####Tea:" by closing it at once ("\n####")


def _complete(server: str, prompt: str, **fields) -> dict:
    body = {"model": MODEL, "prompt": prompt, "parallel": True, "output_format": "raw", **fields}
    response = httpx.post(server + "/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_single_title_plans_reaches_the_engine(server: str) -> None:
    """``single_title_plans`` (`pbd_core.plan_gate`): off, the model's list of one title is dropped once and
    counted in the stats; on, the same list is decoded as a block of one branch."""
    budget = {"max_tokens": 10, "max_branch_tokens": 4}
    dropped = _complete(server, ONE_TITLE_PROMPT, single_title_plans=False, **budget)
    kept = _complete(server, ONE_TITLE_PROMPT, single_title_plans=True, **budget)
    assert dropped["pbd"]["stats"]["dropped_single_title_plans"] == 1
    assert not dropped["choices"][0]["text"].startswith("####")  # the answer did not open with the list
    assert kept["pbd"]["stats"]["dropped_single_title_plans"] == 0
    assert kept["pbd"]["parallel"] is True and [b["title"] for b in kept["pbd"]["branches"]] == ["Haiku"]
    assert kept["pbd"]["branches"][0]["tokens"] > 0
    assert kept["choices"][0]["text"].startswith("####Haiku:")


def test_nonempty_branches_reaches_the_engine(server: str) -> None:
    """``nonempty_branches`` (`pbd_core.branch_start`): off, a branch the model closes at once stays empty;
    on, the mask keeps it open until it has written a non-space character."""
    budget = {"branches": ["Tea", "Coffee"], "max_tokens": 12, "max_branch_tokens": 3}
    off = _complete(server, EMPTY_STEPS_PROMPT, nonempty_branches=False, **budget)
    on = _complete(server, EMPTY_STEPS_PROMPT, nonempty_branches=True, **budget)
    assert off["choices"][0]["text"].startswith("####Tea:\n####Coffee:\n####%%%%")  # both steps empty
    assert [b["finish_reason"] for b in off["pbd"]["branches"]] == ["end_marker", "end_marker"]
    text = on["choices"][0]["text"]
    assert text.startswith("####Tea:") and "\n####Coffee:" in text
    steps = [text.split("####Tea:", 1)[1].split("\n####", 1)[0], text.split("####Coffee:", 1)[1].split("\n####", 1)[0]]
    assert all(step.strip() for step in steps), text  # each step wrote something on its title's line
    assert [b["title"] for b in on["pbd"]["branches"]] == ["Tea", "Coffee"]


ANSWER_LINES_PROMPT = (
    "Prices.\n####Milk: Answer: 1\nAnswer: 2\nAnswer: 3\n####Bread: Answer: 4\nAnswer: 5\nAnswer: 6\n"
    "####Eggs: Answer: 7\nAnswer: 8\nAnswer: 9\n"
)  # every step of the examples goes on with more "Answer:" lines: the model's steps do too


def test_repeated_label_guard_reaches_the_engine(server: str) -> None:
    """``repeated_label_guard`` (`pbd_core.repetition`): on (the default), a step ends before its second
    ``Answer:`` line; off, it writes on to its budget."""
    budget = {"branches": ["Tea", "Coffee"], "max_tokens": 40, "max_branch_tokens": 12}
    on = _complete(server, ANSWER_LINES_PROMPT, **budget)
    off = _complete(server, ANSWER_LINES_PROMPT, repeated_label_guard=False, **budget)
    assert [b["finish_reason"] for b in on["pbd"]["branches"]] == ["repetition", "repetition"]
    assert [b["finish_reason"] for b in off["pbd"]["branches"]] == ["length", "length"]
    tea = on["choices"][0]["text"].split("####Tea:", 1)[1].split("\n####", 1)[0]
    assert tea.count("Answer:") == 1, on["choices"][0]["text"]
    assert off["choices"][0]["text"].split("####Tea:", 1)[1].split("\n####", 1)[0].count("Answer:") == 2


def test_exemplar_step_reaches_the_engine(server: str) -> None:
    """``exemplar_step``: the first of three steps is written alone, so at most two branches are live."""
    budget = {"branches": ["Tea", "Coffee", "Juice"], "max_tokens": 40, "max_branch_tokens": 6}
    on = _complete(server, ANSWER_LINES_PROMPT, exemplar_step=True, **budget)
    off = _complete(server, ANSWER_LINES_PROMPT, **budget)
    assert (on["pbd"]["stats"]["max_live_branches"], off["pbd"]["stats"]["max_live_branches"]) == (2, 3)
    assert [b["title"] for b in on["pbd"]["branches"]] == ["Tea", "Coffee", "Juice"]


@pytest.mark.parametrize("field", ["nonempty_branches", "single_title_plans", "repeated_label_guard", "exemplar_step"])
@pytest.mark.parametrize("endpoint", ["/completions", "/chat/completions"])
def test_a_non_boolean_engine_flag_is_refused_naming_the_field(server: str, field: str, endpoint: str) -> None:
    body = {"model": MODEL, "max_tokens": 2, field: "sometimes"}
    body.update({"prompt": "Hi"} if endpoint == "/completions" else {"messages": ask("Hi")})
    response = httpx.post(server + endpoint, json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{field}: ") and "boolean" in error["message"]


# --------------------------------------------------------------------------- framework clients


def test_langchain_chat_openai(server: str) -> None:
    pytest.importorskip("langchain_openai")
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    llm = ChatOpenAI(base_url=server, api_key="unused", model=MODEL, max_tokens=6, temperature=0, max_retries=0)
    message = llm.invoke("Say hello.")
    assert message.content and message.usage_metadata["output_tokens"] <= 6
    assert "".join(chunk.content for chunk in llm.stream("Say hello.")) == message.content

    called = ChatOpenAI(base_url=server, api_key="unused", model=MODEL, max_tokens=40, temperature=0,
                        max_retries=0).bind_tools([WEATHER_TOOL], tool_choice="any").invoke("Weather in Rome?")
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]

    class Answer(BaseModel):
        hot: bool

    structured = ChatOpenAI(base_url=server, api_key="unused", model=MODEL, max_tokens=20, temperature=0,
                            max_retries=0).with_structured_output(Answer)
    assert isinstance(structured.invoke("Is the sun hot?"), Answer)


async def test_llama_index_openai_like(server: str) -> None:
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL, api_base=server, api_key="unused", is_chat_model=True, max_tokens=5,
                     temperature=0.0, context_window=8192, max_retries=0)
    messages = [ChatMessage(role="user", content="Name a fruit.")]
    answer = llm.chat(messages)
    assert answer.message.content
    streamed = [r async for r in await llm.astream_chat(messages)]
    assert streamed[-1].message.content == answer.message.content
    assert llm.complete("Name a fruit.").text == answer.message.content


# --------------------------------------------------------------------------- our remote executor, served


def test_the_remote_executor_on_pbd_serve_equals_the_in_process_decoder(server: str) -> None:
    from pbd_core import ParallelBranchDecoder

    # A server samples on its own: the in-process token masks (nonempty_branches) have no effect there.
    options = {"branches": ["Tea", "Coffee"], "max_branch_tokens": 5, "max_new_tokens": 16, "nonempty_branches": False}
    prompt = ask("Compare tea and coffee in one line each.")
    remote = ParallelBranchDecoder.from_server(server)
    assert type(remote.tokenizer).__name__ != "ServerTokenizer"  # loaded from the card's root folder
    on_server = remote.generate(prompt, **options)
    local = ParallelBranchDecoder.from_pretrained(MODEL, dtype="float32", device="cpu")
    in_process = local.generate(prompt, **options)
    assert on_server.text == in_process.text
    assert [(b.title, b.text, b.token_ids, b.context_ids, b.finish_reason) for b in on_server.branches] == [
        (b.title, b.text, b.token_ids, b.context_ids, b.finish_reason) for b in in_process.branches
    ]
    assert on_server.finish_reason == in_process.finish_reason
    assert on_server.stats.generated_tokens == in_process.stats.generated_tokens


# --------------------------------------------------------------------------- load


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_bounded_load_with_disconnecting_clients(server: str) -> None:
    """32 mixed requests, 8 at a time, 4 of them abandoned mid-stream: every other one is well-formed, none
    fails, and afterwards the batch and its cache are empty and the memory is back to its idle level."""
    import asyncio

    client = openai.AsyncOpenAI(base_url=server, api_key="unused", timeout=600, max_retries=0)
    health = lambda: httpx.get(root(server) + "/health", timeout=30).json()  # noqa: E731
    await client.chat.completions.create(model=MODEL, messages=ask("Warm up."), max_tokens=4,
                                         extra_body={"branches": ["a", "b"], "max_branch_tokens": 4})
    idle_rss = _rss_bytes(PROCESS["pid"]) if "pid" in PROCESS else None
    gate = asyncio.Semaphore(8)
    tokens = {"completion": 0}

    async def chat(i: int) -> str:
        answer = await client.chat.completions.create(model=MODEL, messages=ask(f"Say something about {i}."),
                                                      max_tokens=12)
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert isinstance(answer.choices[0].message.content, str)
        tokens["completion"] += answer.usage.completion_tokens
        return "chat"

    async def branches(i: int) -> str:
        answer = await client.chat.completions.create(
            model=MODEL, messages=ask(f"Give one tip each, {i}."), max_tokens=40,
            extra_body={"branches": ["Hiking", "Swimming", "Cycling"], "max_branch_tokens": 8})
        assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
        tokens["completion"] += answer.usage.completion_tokens
        return "branches"

    async def streamed(i: int) -> str:
        stream = await client.chat.completions.create(model=MODEL, messages=ask(f"Count to {i}."), max_tokens=12,
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        tokens["completion"] += chunks[-1].usage.completion_tokens
        return "stream"

    async def completion(i: int) -> str:
        answer = await client.completions.create(model=MODEL, prompt=f"Number {i} is", max_tokens=10)
        assert isinstance(answer.choices[0].text, str)
        tokens["completion"] += answer.usage.completion_tokens
        return "completion"

    async def abandoned(i: int) -> str:
        body = {"model": MODEL, "messages": ask("Write a very long story."), "max_tokens": 2000, "stream": True,
                "branches": ["Start", "Middle", "End"], "max_branch_tokens": 600}
        async with httpx.AsyncClient(timeout=600) as http:
            async with http.stream("POST", server + "/chat/completions", json=body) as response:
                assert response.status_code == 200
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 3:
                        break  # leaving the block drops the connection
        return "abandoned"

    kinds = [chat, branches, streamed, completion, chat, branches, streamed, abandoned]

    async def one(i: int) -> str:
        async with gate:
            return await kinds[i % len(kinds)](i)

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(32)), return_exceptions=True)
    seconds = time.perf_counter() - t0
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failures, failures[:3]
    assert outcomes.count("abandoned") == 4
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = health()
        if state["active_decodes"] == 0 and state.get("batch", {}).get("cache_slots", 0) == 0:
            break
        await asyncio.sleep(0.2)
    assert state["active_decodes"] == 0, state
    assert state["batch"]["active"] == 0 and state["batch"]["cache_slots"] == 0, state
    print(f"\nload: 32 requests (4 abandoned), 8 at a time, {seconds:.1f} s, "
          f"{tokens['completion'] / seconds:.1f} completion tok/s over the 28 completed")
    if idle_rss:
        after = _rss_bytes(PROCESS["pid"])
        print(f"server RSS idle {idle_rss / 2**20:.0f} MiB, after the load {after / 2**20:.0f} MiB")
        assert after < idle_rss * 1.25 + 64 * 2**20, (idle_rss, after)
    await client.close()
