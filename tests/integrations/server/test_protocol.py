"""`pbd serve` in process: the OpenAI wire format, errors, disconnects, and the remote executor served.

Two stand-ins for the engine, no weights: `FakeDecoder` replays scripted events
(chat, tools, branches), and a real `ParallelBranchDecoder` over `ScriptedLM`
decodes token by token (completions, token ids, stop strings, grammars). The
real process with the real model is in ``test_pbd_serve_process.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

pytest.importorskip("fastapi")

from chat_template_fakes import ChatDecoder  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from scripted_model import FRUIT, FRUIT_BODIES, PLAN, decoder_for, rules, scripted_decoder  # noqa: E402

from pbd_core import ParallelBranchDecoder, RawPrompt  # noqa: E402
from pbd_core.executors.remote import RemoteExecutor, RemoteExecutorError  # noqa: E402
from pbd_integrations.server import create_app, protocol  # noqa: E402

MESSAGES = [{"role": "user", "content": "Compare tea and coffee."}]
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass(eq=False)
class SlowDecoder(ChatDecoder):
    """Sleeps before every event (like a forward pass); records when its stream was closed."""

    delay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.finished = threading.Event()

    def stream(self, prompt, **options):
        try:
            for event in super().stream(prompt, **options):
                time.sleep(self.delay)
                yield event
        finally:
            self.finished.set()


@dataclass(eq=False)
class FailingDecoder(ChatDecoder):
    """Fails with ``error`` after ``fail_at`` events (0: before the first)."""

    fail_at: int = 0
    error: Exception = RuntimeError("the accelerator fell over")

    def stream(self, prompt, **options):
        for i, event in enumerate(super().stream(prompt, **options)):
            if i == self.fail_at:
                raise self.error
            yield event


def branchy() -> ChatDecoder:
    return ChatDecoder(before=["Intro."], branches={"Tea": [" calm", " leaf."], "Coffee": [" bold", " bean", "."]},
                       after=[" Both", " good."])


def sse_payloads(text: str) -> list:
    """The JSON payloads of an SSE body (``[DONE]`` as the string)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
def grammar_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record the grammars the server asks for instead of compiling them (the fake has no real tokenizer)."""
    requests: list[tuple] = []

    def record(tokenizer, kind, spec, tool_choice):
        requests.append((kind, json.loads(spec) if kind != "lark" else spec, tool_choice))
        return lambda: None

    monkeypatch.setattr(protocol, "_cached_constraint", record)
    return requests


# --------------------------------------------------------------------------- chat


def test_models_and_health() -> None:
    client = TestClient(create_app(branchy(), model_name="pbd-test"))
    card = client.get("/v1/models").json()["data"][0]
    assert (card["id"], card["object"], card["max_model_len"]) == ("pbd-test", "model", 4096)
    assert client.get("/v1/models/pbd-test").json()["id"] == "pbd-test"
    assert client.get("/health").json() == {"status": "ok", "model": "pbd-test", "active_decodes": 0, "served": 0}


def test_chat_answer_is_the_reading_order_text_with_usage_and_the_engine_summary() -> None:
    decoder = branchy()
    body = TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": MESSAGES}).json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    readable = "Intro.\n\n**Tea**\n\ncalm leaf.\n\n**Coffee**\n\nbold bean.\n\nBoth good."
    assert choice["message"] == {"role": "assistant", "content": readable}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    assert body["pbd"]["parallel"] is True and [b["title"] for b in body["pbd"]["branches"]] == ["Tea", "Coffee"]
    assert decoder.calls[0][0].text.endswith("<|im_start|>assistant\n")  # rendered with the chat template


def test_stream_adds_up_to_the_answer_and_carries_branch_progress() -> None:
    client = TestClient(create_app(branchy()))
    whole = client.post("/v1/chat/completions", json={"messages": MESSAGES}).json()
    response = client.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole["choices"][0]["message"]["content"]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]
    assert not any("usage" in c for c in chunks)  # only with stream_options.include_usage
    progress = [c["pbd"] for c in chunks if "pbd" in c]
    assert progress[0] == {"event": "branch_start", "branch": 0, "title": "Tea", "block": 0}
    coffee = "".join(p["text"] for p in progress if p["event"] == "branch_token" and p["branch"] == 1)
    assert coffee == "####Coffee: bold bean."
    assert [p["finish_reason"] for p in progress if p["event"] == "branch_end"] == ["end_marker", "end_marker"]
    assert progress[-1]["event"] == "final" and progress[-1]["stats"]["generated_tokens"] == 8


def test_include_usage_adds_a_last_chunk_without_choices() -> None:
    client = TestClient(create_app(branchy()))
    request = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_payloads(client.post("/v1/chat/completions", json=request).text)[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_options_and_extension_fields_reach_the_engine() -> None:
    decoder = branchy()
    request = {
        "messages": [{"role": "developer", "content": "Be brief."}, *MESSAGES],
        "max_completion_tokens": 77, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "END",
        "branches": ["Tea", "Coffee"], "max_branch_tokens": 20, "max_branches": 4, "merge": "reuse",
        "parallel": True, "top_k": 5, "user": "ignored", "parallel_tool_calls": False, "unknown_field": 1,
    }
    assert TestClient(create_app(decoder)).post("/v1/chat/completions", json=request).status_code == 200
    prompt, options = decoder.calls[0]
    assert options == {"max_new_tokens": 77, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["END"],
                       "branches": ["Tea", "Coffee"], "max_branch_tokens": 20, "max_branches": 4, "merge": "reuse",
                       "parallel": True, "top_k": 5}
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt.text  # developer is the system role


def test_text_content_parts_are_joined() -> None:
    decoder = branchy()
    parts = [{"type": "text", "text": "Compare "}, {"type": "text", "text": "tea."}]
    TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert "<|im_start|>user\nCompare tea.<|im_end|>" in decoder.calls[0][0].text


def tool_answer() -> ChatDecoder:
    return ChatDecoder(before=["Checking.", " <tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
                               "\n</tool_call>"])


def test_tool_calls_come_back_as_openai_tool_calls(grammar_requests: list) -> None:
    decoder = tool_answer()
    client = TestClient(create_app(decoder))
    request = {"messages": MESSAGES, "tools": [GET_WEATHER], "tool_choice": "required"}
    body = client.post("/v1/chat/completions", json=request).json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Checking." and body["choices"][0]["finish_reason"] == "tool_calls"
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("get_weather", {"city": "Paris"})
    # The tools were described to the model and decoding ran under the tool-call grammar.
    assert '"name": "get_weather"' in decoder.calls[0][0].text
    kind, spec, choice = grammar_requests[0]
    assert (kind, spec["tools"][0]["function"]["name"], choice) == ("tools", "get_weather", "required")
    # Streamed: the raw call never shows as content; one tool_calls delta, then the finish.
    chunks = sse_payloads(client.post("/v1/chat/completions", json={**request, "stream": True}).text)[:-1]
    assert not any("tool_call>" in (c["choices"][0]["delta"].get("content") or "") for c in chunks)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(d["index"], d["function"]["name"]) for d in deltas] == [(0, "get_weather")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_named_tool_choice_and_none(grammar_requests: list) -> None:
    client = TestClient(create_app(tool_answer()))
    named = {"type": "function", "function": {"name": "get_weather"}}
    client.post("/v1/chat/completions", json={"messages": MESSAGES, "tools": [GET_WEATHER], "tool_choice": named})
    assert grammar_requests[-1][2] == "get_weather"
    body = client.post("/v1/chat/completions",
                       json={"messages": MESSAGES, "tools": [GET_WEATHER], "tool_choice": "none"}).json()
    assert len(grammar_requests) == 1 and "<tool_call>" in body["choices"][0]["message"]["content"]


def test_assistant_tool_calls_and_tool_results_are_rendered(grammar_requests: list) -> None:
    decoder = ChatDecoder(before=["Sunny."])
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sun"},
    ]
    body = TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": history, "tools": [GET_WEATHER]}).json()
    assert body["choices"][0]["message"]["content"] == "Sunny."
    prompt = decoder.calls[0][0].text
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt and "22 C, sun" in prompt


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
         {"type": "object", "properties": {"a": {"type": "integer"}}}),
        ({"type": "json_object"}, {"type": "object"}),
    ],
)
def test_response_format_decodes_under_a_json_grammar(grammar_requests: list, response_format, schema) -> None:
    decoder = ChatDecoder(before=['{"a": 1}'])
    body = TestClient(create_app(decoder)).post(
        "/v1/chat/completions", json={"messages": MESSAGES, "response_format": response_format}).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1}
    assert grammar_requests == [("json", schema, "")]
    assert "Respond only with a JSON object" in decoder.calls[0][0].text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("request_fields", "status", "param", "words"),
    [
        ({"temperature": -1}, 400, "temperature", "greater than or equal to 0"),
        ({"top_p": 2}, 400, "top_p", "less than or equal to 1"),
        ({"max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
        ({"n": 2}, 400, "n", "only n=1"),
        ({"logprobs": True}, 400, "logprobs", "not supported"),
        ({"frequency_penalty": 0.5}, 400, "frequency_penalty", "repetition_penalty"),
        ({"model": "gpt-4o"}, 404, "model", "does not exist"),
        ({"messages": []}, 400, "messages", "must not be empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", "Input should be"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         400, "messages[0].content", "only text parts"),
        ({"branches": ["A:B", ""]}, 400, "branches", "branch title 1 is empty"),
        ({"branches": ["A", "B", "C"], "max_branches": 2}, 400, "max_branches", "got 3 branches"),
        ({"merge": "zip"}, 400, "merge", "'reuse' or 'recompute'"),
        ({"stop": [""]}, 400, "stop", "must not be empty"),
        ({"tool_choice": "required"}, 400, "tool_choice", "only allowed when tools"),
        ({"tools": [GET_WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         400, "tool_choice", "not one of the tools"),
        ({"response_format": {"type": "xml"}}, 400, "response_format.type", "'json_schema'"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         400, "response_format.json_schema.schema", "JSON schema"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, 400, "messages", "context window is 4096"),
    ],
)
def test_bad_input_is_a_4xx_with_the_field_named(grammar_requests: list, request_fields, status, param, words) -> None:
    decoder = branchy()
    response = TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": MESSAGES, **request_fields})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    assert decoder.calls == []  # refused before any decoding


def test_malformed_json_and_unknown_routes() -> None:
    client = TestClient(create_app(branchy()))
    response = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


def test_an_engine_failure_is_a_5xx_with_its_cause_and_the_server_keeps_serving() -> None:
    decoder = FailingDecoder(fail_at=0)
    client = TestClient(create_app(decoder), raise_server_exceptions=False)
    response = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError: the accelerator fell over" in error["message"]
    streamed = client.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert streamed.status_code == 500  # failed before the first event: still a plain HTTP error
    decoder.fail_at = 10**9
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200
    assert client.get("/health").json()["active_decodes"] == 0


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event() -> None:
    decoder = FailingDecoder(before=["a", "b", "c"], fail_at=2)
    payloads = sse_payloads(TestClient(create_app(decoder)).post(
        "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}).text)
    assert payloads[-1] == "[DONE]"
    assert "the accelerator fell over" in payloads[-2]["error"]["message"]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[:-2]) == "ab"


def test_an_engine_value_error_before_decoding_is_a_4xx() -> None:
    decoder = FailingDecoder(fail_at=0, error=ValueError("prompt is 9000 tokens but the model's context window is 8192 tokens"))
    response = TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


# --------------------------------------------------------------------------- disconnects


async def _call_and_disconnect(app, body: dict, *, after_sends: int) -> list[dict]:
    """Call the ASGI app as a server would; the client disconnects after ``after_sends`` messages."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": body.pop("_path", "/v1/chat/completions"), "raw_path": b"",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
    }
    sent: list[dict] = []
    gone = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if len(sent) >= after_sends:
            gone.set()

    if after_sends == 0:
        gone.set()
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent


async def _wait_for(flag: threading.Event, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if flag.is_set():
            return True
        await asyncio.sleep(0.01)
    return flag.is_set()


async def test_a_client_that_disconnects_mid_stream_stops_its_decode() -> None:
    decoder = SlowDecoder(before=[f" w{i}" for i in range(500)])  # 5 s of "decoding"
    app = create_app(decoder)
    t0 = time.perf_counter()
    sent = await _call_and_disconnect(app, {"messages": MESSAGES, "stream": True}, after_sends=4)
    assert await _wait_for(decoder.finished)
    assert time.perf_counter() - t0 < 3
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert app.state.decodes.active == 0
    # The server goes on serving.
    decoder.before = ["Still", " here."]
    answer = TestClient(app).post("/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert answer["choices"][0]["message"]["content"] == "Still here."


async def test_a_client_that_disconnects_while_waiting_for_a_whole_answer_stops_its_decode() -> None:
    decoder = SlowDecoder(before=[f" w{i}" for i in range(500)])
    app = create_app(decoder)
    t0 = time.perf_counter()
    sent = await _call_and_disconnect(app, {"messages": MESSAGES}, after_sends=0)
    assert await _wait_for(decoder.finished)
    assert time.perf_counter() - t0 < 3 and app.state.decodes.active == 0
    assert sent[0]["status"] == 499


# --------------------------------------------------------------------------- completions on a real engine

SCRIPT = (*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."), ("Say: ", "caf\u00e9 ok"))


def scripted() -> ParallelBranchDecoder:
    return decoder_for(*SCRIPT, leak_guard=FRUIT)


@pytest.fixture(scope="module")
def engine() -> ParallelBranchDecoder:
    return scripted()


@pytest.fixture(scope="module")
def client(engine) -> TestClient:
    return TestClient(create_app(engine))


def ids_of(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_token_id_prompt_returns_every_sampled_id_and_the_stop_string(engine, client) -> None:
    request = {"prompt": ids_of(engine, "Q\n"), "max_tokens": 40, "stop": ["####"], "return_token_ids": True,
               "include_stop_str_in_output": True}
    body = client.post("/v1/completions", json=request).json()
    choice = body["choices"][0]
    assert choice["text"] == "Intro.\n####"
    assert choice["token_ids"] == ids_of(engine, "Intro.\n####")
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "####")
    # Without include_stop_str_in_output the stop string is left out, as OpenAI does.
    plain = client.post("/v1/completions", json={**request, "include_stop_str_in_output": False}).json()["choices"][0]
    assert plain["text"] == "Intro.\n" and plain["token_ids"] == choice["token_ids"]


def test_every_sampled_id_is_sent_even_without_text_and_the_eos_that_ends_the_completion(engine, client) -> None:
    request = {"prompt": "Say: ", "max_tokens": 40, "return_token_ids": True, "stream": True,
               "stream_options": {"include_usage": True}}
    model = engine.model
    model.complete_characters = False  # the script must see the half character, as with a real model
    try:
        chunks = sse_payloads(client.post("/v1/completions", json=request).text)[:-1]
    finally:
        model.complete_characters = True
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    ids = [t for c in chunks if c["choices"] for t in c["choices"][0]["token_ids"]]
    # The scripted model writes one byte per token: the first byte of "\u00e9" is half a character
    # (no text), then it sees "caf\ufffd", which no rule continues, and ends.
    assert text == "caf"
    assert ids == ids_of(engine, "caf") + ids_of(engine, "\u00e9")[:1] + [engine.tokenizer.eos_token_id]
    final = chunks[-2]["choices"][0]
    assert (final["finish_reason"], final["stop_reason"]) == ("stop", None)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(ids)


def test_max_tokens_ends_with_length_and_completions_default_to_plain_decoding(engine, client) -> None:
    body = client.post("/v1/completions", json={"prompt": "Q\n", "max_tokens": 3}).json()
    assert (body["choices"][0]["text"], body["choices"][0]["finish_reason"]) == ("Int", "length")
    assert body["pbd"]["parallel"] is False and body["usage"]["completion_tokens"] == 3


def test_completions_with_branches_decode_in_parallel(client) -> None:
    body = client.post("/v1/completions", json={"prompt": "Q\n", "max_tokens": 60, "branches": FRUIT}).json()
    assert body["pbd"]["parallel"] is True
    assert body["choices"][0]["text"].startswith("**Apples**\n\nred.\n\n**Bananas**\n\nlong and yellow.")
    raw = client.post("/v1/completions", json={"prompt": "Q\n", "max_tokens": 60, "branches": FRUIT,
                                                 "output_format": "raw"}).json()
    assert raw["choices"][0]["text"].startswith("####Apples: red.\n####Bananas: long and yellow.")
    response = client.post("/v1/completions", json={"prompt": "Q\n", "branches": FRUIT, "return_token_ids": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "return_token_ids"


@pytest.mark.parametrize(
    ("prompt", "words"),
    [("", "must not be empty"), ([], "must not be empty"), (["a", "b"], "batches"), ([1, 10**6], "outside the vocabulary")],
)
def test_bad_prompts_are_refused(client, prompt, words) -> None:
    response = client.post("/v1/completions", json={"prompt": prompt})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert words in response.json()["error"]["message"]


def test_a_lark_grammar_constrains_the_completion(client) -> None:
    pytest.importorskip("llguidance")
    request = {"prompt": "Q\n", "max_tokens": 10, "structured_outputs": {"grammar": 'start: "yes" | "no"'},
               "return_token_ids": True}
    body = client.post("/v1/completions", json=request).json()
    assert body["choices"][0]["text"] in ("yes", "no") and body["choices"][0]["finish_reason"] == "stop"
    bad = client.post("/v1/completions", json={**request, "structured_outputs": {"grammar": "start: ("}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "structured_outputs.grammar"


def test_tokenize_and_detokenize(engine, client) -> None:
    tokens = client.post("/tokenize", json={"prompt": "Q\n"}).json()["tokens"]
    assert tokens == ids_of(engine, "Q\n")
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "Q\n"}
    rendered = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()["tokens"]
    assert engine.tokenizer.decode(rendered) == engine.render_messages([{"role": "user", "content": "hi"}])


# --------------------------------------------------------------------------- the remote executor, served


class _AppTransport(httpx.BaseTransport):
    """Sync HTTP to the app through a `TestClient` (a whole response at a time)."""

    def __init__(self, app) -> None:
        self.client = TestClient(app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(request.method, request.url.path, content=request.read(),
                                     headers=dict(request.headers))
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def remote(app, tokenizer=None) -> ParallelBranchDecoder:
    executor = RemoteExecutor("http://pbd-serve/v1", tokenizer=tokenizer, transport=_AppTransport(app),
                              async_transport=httpx.ASGITransport(app))
    return ParallelBranchDecoder.from_executor(executor)


def summary(result):
    return result.text, [(b.title, b.text, b.token_ids, b.finish_reason) for b in result.branches], result.finish_reason


@pytest.mark.parametrize(
    "options",
    [{}, {"branches": FRUIT}, {"branches": FRUIT, "parallel": False}, {"branches": FRUIT, "stop": ["yellow"]},
     {"branches": FRUIT, "max_branch_tokens": 4}, {"max_new_tokens": 30}, {"parallel": False}],
    ids=["planned", "caller-branches", "sequential", "stop-string", "branch-budget", "answer-budget", "plain"],
)
def test_the_remote_executor_on_pbd_serve_answers_as_in_process(engine, options) -> None:
    on_server = remote(create_app(engine), tokenizer=engine.tokenizer).generate(RawPrompt("Q\n"), **options)
    in_process = scripted().generate(RawPrompt("Q\n"), **options)
    assert summary(on_server) == summary(in_process)


async def test_the_async_remote_executor_on_pbd_serve_answers_as_in_process(engine) -> None:
    on_server = await remote(create_app(engine), tokenizer=engine.tokenizer).agenerate(RawPrompt("Q\n"), branches=FRUIT)
    assert summary(on_server) == summary(scripted().generate(RawPrompt("Q\n"), branches=FRUIT))


def test_without_a_local_tokenizer_the_remote_executor_uses_tokenize_and_detokenize(engine) -> None:
    decoder = remote(create_app(engine))
    assert type(decoder.tokenizer).__name__ == "ServerTokenizer"
    # Cut by the budget in the conclusion: with no readable model folder the client cannot
    # know which id is EOS (`pbd_core.executors.remote._eos_ids` reads it from the folder).
    on_server = decoder.generate(RawPrompt("Q\n"), branches=FRUIT, max_new_tokens=40)
    in_process = scripted().generate(RawPrompt("Q\n"), branches=FRUIT, max_new_tokens=40)
    assert summary(on_server) == summary(in_process) and on_server.finish_reason == "length"


def test_the_remote_executor_reports_the_server_error(engine) -> None:
    decoder = remote(create_app(engine), tokenizer=engine.tokenizer)
    with pytest.raises(RemoteExecutorError, match="HTTP 400.*structured_outputs"):
        decoder.generate(RawPrompt("Q\n"), parallel=False, constraint=_bad_grammar)


def _bad_grammar():  # a constraint whose lark text the server cannot compile
    raise AssertionError("never built locally")


_bad_grammar.grammar = "start: ("


def test_a_json_grammar_sent_as_lark_decodes_as_in_process(engine) -> None:
    pytest.importorskip("llguidance")
    from pbd_integrations.grammar import json_schema_constraint

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    options = {"parallel": False, "max_new_tokens": 20, "constraint": json_schema_constraint(engine.tokenizer, schema)}
    on_server = remote(create_app(engine), tokenizer=engine.tokenizer).generate(RawPrompt("Q\n"), **options)
    in_process = scripted().generate(RawPrompt("Q\n"), **options)
    assert json.loads(on_server.text) == {"ok": json.loads(on_server.text)["ok"]}
    assert summary(on_server) == summary(in_process)


# --------------------------------------------------------------------------- schema property order

ORDERED = {  # properties deliberately not in alphabetical order, nested too
    "type": "object",
    "properties": {"zeta": {"type": "string"}, "alpha": {"type": "string"},
                   "mid": {"type": "object", "properties": {"y": {"type": "string"}, "b": {"type": "string"}},
                           "required": ["y", "b"]}},
    "required": ["zeta", "alpha", "mid"],
}
ORDERED_TEXT = '{"zeta": "z", "alpha": "a", "mid": {"y": "y", "b": "b"}}'
ORDERED_TOOL = {"type": "function", "function": {"name": "put", "description": "Store a record", "parameters": ORDERED}}


def _key_order(value) -> list:
    """Every object's keys, in order, depth first (nested objects too)."""
    if isinstance(value, dict):
        return [list(value)] + [k for v in value.values() for k in _key_order(v)]
    return []


@pytest.fixture
def grammar_specs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The exact spec text each grammar is compiled from (its key order included)."""
    specs: list[tuple[str, str]] = []
    monkeypatch.setattr(protocol, "_cached_constraint", lambda tokenizer, kind, spec, choice: specs.append((kind, spec)) or (lambda: None))
    return specs


@pytest.mark.parametrize(
    "request_fields",
    [{"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": ORDERED}}},
     {"tools": [ORDERED_TOOL], "tool_choice": "required"},
     {"tools": [ORDERED_TOOL], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": ORDERED}}}],
    ids=["response-format", "tools", "tools-and-response-format"],
)
def test_schema_property_order_reaches_the_grammar_and_the_prompt(grammar_specs, request_fields) -> None:
    decoder = ChatDecoder(before=["{}"])
    TestClient(create_app(decoder)).post("/v1/chat/completions", json={"messages": MESSAGES, **request_fields})
    [(kind, spec)] = grammar_specs
    compiled = json.loads(spec)
    schemas = [compiled] if kind == "json" else [t["function"]["parameters"] for t in compiled["tools"]]
    schemas += [compiled["response_schema"]] if kind == "tools" and compiled["response_schema"] else []
    for schema in schemas:
        assert _key_order(schema) == _key_order(ORDERED)
    prompt = decoder.calls[0][0].text
    assert json.dumps(ORDERED["properties"])[1:-1] in prompt  # the model is shown the fields in the same order


def test_structured_outputs_json_keeps_property_order(grammar_specs) -> None:
    client = TestClient(create_app(ChatDecoder(before=["{}"])))
    client.post("/v1/completions", json={"prompt": "Q\n", "structured_outputs": {"json": ORDERED}})
    [(kind, spec)] = grammar_specs
    assert kind == "json" and _key_order(json.loads(spec)) == _key_order(ORDERED)


def test_schemas_that_differ_only_in_property_order_get_their_own_grammar(monkeypatch) -> None:
    """The grammar cache keys on the schema text as given: a reordered schema is a different grammar."""
    protocol._cached_constraint.cache_clear()
    built: list[list[str]] = []
    from pbd_integrations import grammar

    monkeypatch.setattr(grammar, "json_schema_constraint", lambda tokenizer, schema: built.append(list(schema["properties"])) or (lambda: None))
    reordered = dict(ORDERED, properties=dict(reversed(list(ORDERED["properties"].items()))))
    client = TestClient(create_app(ChatDecoder(before=["{}"])))
    for schema in (ORDERED, reordered, ORDERED):
        client.post("/v1/chat/completions", json={"messages": MESSAGES, "response_format": {
            "type": "json_schema", "json_schema": {"name": "r", "schema": schema}}})
    protocol._cached_constraint.cache_clear()
    assert built == [["zeta", "alpha", "mid"], ["mid", "alpha", "zeta"]]  # the third request hit the cache


def _chat_engine(answer: str) -> ParallelBranchDecoder:
    """A real engine (ScriptedLM, byte tokenizer) with a plain chat template; the model writes ``answer``."""
    from tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    return scripted_decoder(rules(("Store it.\n[assistant] ", answer)), tokenizer=tokenizer)


def test_the_model_writes_the_fields_in_schema_order_under_the_real_grammar() -> None:
    """End to end (llguidance on the byte tokenizer): a model that writes the schema's order is let through.

    With the schema's keys sorted, the grammar would demand ``alpha`` first and the answer would
    come out reordered (the model's ``"z`` is not allowed after ``{"``).
    """
    pytest.importorskip("llguidance")
    protocol._cached_constraint.cache_clear()
    messages = [{"role": "user", "content": "Store it."}]
    format_ = {"type": "json_schema", "json_schema": {"name": "r", "schema": ORDERED}}
    body = TestClient(create_app(_chat_engine(ORDERED_TEXT))).post("/v1/chat/completions", json={
        "messages": messages, "response_format": format_, "max_tokens": 120, "parallel": False}).json()
    content = body["choices"][0]["message"]["content"]
    assert content == ORDERED_TEXT and list(json.loads(content)) == ["zeta", "alpha", "mid"]

    call = f'<tool_call>\n{{"name": "put", "arguments": {ORDERED_TEXT}}}\n</tool_call>'
    body = TestClient(create_app(_chat_engine(call))).post("/v1/chat/completions", json={
        "messages": messages, "tools": [ORDERED_TOOL], "tool_choice": "required", "max_tokens": 160,
        "parallel": False}).json()
    [tool_call] = body["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"]["arguments"] == ORDERED_TEXT
    protocol._cached_constraint.cache_clear()
