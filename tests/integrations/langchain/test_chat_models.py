"""ChatParallelBranch against a scripted decoder: conversion, streaming, events, tools, options.

No weights are loaded here; `test_chat_models_real.py` runs the same
contracts on the real default model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from pbd_integrations import ChatParallelBranch
from pbd_integrations.langchain import BRANCH_END_EVENT, BRANCH_START_EVENT, BRANCH_TOKEN_EVENT

from lc_fakes import FakeDecoder


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


class EventLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.tokens: list[str] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def branchy() -> FakeDecoder:
    return FakeDecoder(
        before=["Plan:"],
        branches={"Cats": [" purr", " a", " lot"], "Dogs": [" bark"], "Fish": [" swim", " quietly"]},
        after=["Both", " fine."],
    )


def test_construction_does_not_load_weights() -> None:
    model = ChatParallelBranch(model="no/such/folder")
    assert model._decoder is None  # the path is only resolved on first use


def test_a_built_decoder_can_be_passed_as_model(fake_decoder: FakeDecoder) -> None:
    model = ChatParallelBranch(model=fake_decoder)
    assert model.model == "fake"
    assert model.decoder is fake_decoder


def test_stream_chunks_add_up_to_invoke() -> None:
    model = ChatParallelBranch(model=branchy())
    chunks = list(model.stream("Compare pets."))
    message = model.invoke("Compare pets.")
    assert "".join(c.content for c in chunks) == message.content
    # Readable: each step under its title, no format markers; the format text stays in the metadata.
    assert message.content == "Plan:\n\n**Cats**\n\npurr a lot\n\n**Dogs**\n\nbark\n\n**Fish**\n\nswim quietly\n\nBoth fine."
    assert message.response_metadata["raw_text"] == "Plan:####Cats: purr a lot####Dogs: bark####Fish: swim quietly####%%%%Both fine."


def test_first_branch_streams_live_and_later_branches_follow_in_order() -> None:
    chunks = [c.content for c in ChatParallelBranch(model=branchy()).stream("x") if c.content]
    # Branch 0 arrives token by token; branch 1 and 2 are flushed once the ones before them end.
    assert chunks[:5] == ["Plan:", "\n\n**Cats**", "\n\npurr", " a", " lot"]
    assert "".join(chunks[5:]) == "\n\n**Dogs**\n\nbark\n\n**Fish**\n\nswim quietly\n\nBoth fine."
    raw = [c.content for c in ChatParallelBranch(model=branchy(), output_format="raw").stream("x") if c.content]
    assert raw[:5] == ["Plan:", "####Cats:", " purr", " a", " lot"]
    assert "".join(raw[5:]) == "####Dogs: bark####Fish: swim quietly####%%%%Both fine."


def test_custom_events_carry_every_branch_token() -> None:
    log = EventLog()
    model = ChatParallelBranch(model=branchy())
    model.invoke("x", config={"callbacks": [log]})
    tokens = [d for name, d in log.events if name == BRANCH_TOKEN_EVENT]
    for index, (title, words) in enumerate(branchy().branches.items()):
        mine = [d for d in tokens if d["branch"] == index]
        assert all(d["title"] == title and d["stage"] == "parallel" for d in mine)
        assert "".join(d["text"] for d in mine) == f"####{title}:" + "".join(words)
    starts = [d["title"] for name, d in log.events if name == BRANCH_START_EVENT]
    ends = {d["title"]: d["text"] for name, d in log.events if name == BRANCH_END_EVENT}
    assert starts == ["Cats", "Dogs", "Fish"]
    assert ends == {"Cats": " purr a lot", "Dogs": " bark", "Fish": " swim quietly"}


async def test_custom_events_show_in_astream_events() -> None:
    model = ChatParallelBranch(model=branchy())
    names = [
        (e["name"], e["data"]["branch"])
        async for e in model.astream_events("x", version="v2")
        if e["event"] == "on_custom_event" and e["name"] == BRANCH_TOKEN_EVENT
    ]
    assert len(names) == 3 + 6  # a title event per branch, then one event per word
    assert {b for _, b in names} == {0, 1, 2}


def test_usage_and_metadata_are_on_exactly_one_chunk() -> None:
    chunks = list(ChatParallelBranch(model=branchy()).stream("x"))
    with_usage = [c for c in chunks if c.usage_metadata]
    with_name = [c for c in chunks if c.response_metadata.get("model_name")]
    assert len(with_usage) == 1 and with_usage == with_name == [chunks[-1]]
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}
    meta = chunks[-1].response_metadata
    assert meta["model_name"] == "fake-model" and meta["finish_reason"] == "stop"
    assert [(b["title"], b["tokens"]) for b in meta["branches"]] == [("Cats", 3), ("Dogs", 1), ("Fish", 2)]
    assert meta["forward_passes"] == 8 and meta["tokens_per_forward_pass"] == 1.125
    assert meta["parallel"] is True


def test_invoke_reports_the_same_usage_and_metadata() -> None:
    message = ChatParallelBranch(model=branchy()).invoke("x")
    assert message.usage_metadata["total_tokens"] == 16
    assert message.response_metadata["model_name"] == "fake-model"


def test_options_reach_the_engine(fake_decoder: FakeDecoder) -> None:
    model = ChatParallelBranch(model=fake_decoder, max_tokens=33, temperature=0.5, seed=3, stop=["END"], merge="recompute")
    model.invoke("x", stop=["STOP"], branches=["A", "B"], max_branch_tokens=9)
    model.bind(branches=["C"]).invoke("y")
    (_, first), (_, second) = fake_decoder.calls
    assert first["max_new_tokens"] == 33 and first["temperature"] == 0.5 and first["seed"] == 3
    assert first["stop"] == ["END", "STOP"] and first["merge"] == "recompute"
    assert first["branches"] == ["A", "B"] and first["max_branch_tokens"] == 9
    assert second["branches"] == ["C"] and second["stop"] == ["END"]


def test_bad_options_fail_with_the_option_named(fake_decoder: FakeDecoder) -> None:
    model = ChatParallelBranch(model=fake_decoder)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        model.invoke("x", colour="red")
    with pytest.raises(ValueError, match="cannot switch models per call"):
        model.invoke("x", model="other")
    with pytest.raises(ValueError, match="text only"):
        model.invoke([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])


def test_messages_render_through_the_chat_template(fake_decoder: FakeDecoder) -> None:
    model = ChatParallelBranch(model=fake_decoder, plan_instructions=False)  # planning: test_plan_instructions.py
    model.invoke(
        [
            SystemMessage("Be brief."),
            HumanMessage("Weather in Paris?"),
            AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
            ToolMessage("sunny", tool_call_id="c1", name="get_weather"),
        ]
    )
    prompt = fake_decoder.calls[0][0].text
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris?")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.fixture
def grammar_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record the grammars the adapter asks for instead of compiling them (the fake has no real tokenizer).

    Compiled grammars are tested with a real tokenizer in ``tests/integrations/test_grammar.py``.
    """
    from pbd_integrations.langchain import chat_models

    requests: list[tuple] = []

    def record(tokenizer, kind, spec, tool_choice):
        requests.append((kind, json.loads(spec), tool_choice))
        return lambda: None

    monkeypatch.setattr(chat_models, "_cached_constraint", record)
    return requests


def tool_answer(arguments: str = '{"city": "Paris"}') -> FakeDecoder:
    return FakeDecoder(before=["Checking.", " <tool_call>", '\n{"name": "get_weather", ', f'"arguments": {arguments}}}', "\n</tool_call>"])


def test_tool_calls_are_parsed_and_streamed_as_chunks(grammar_requests: list) -> None:
    decoder = tool_answer()
    model = ChatParallelBranch(model=decoder).bind_tools([get_weather])
    message = model.invoke("Weather in Paris?")
    assert message.content == "Checking."
    assert [(c["name"], c["args"], c["type"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"}, "tool_call")]
    assert message.tool_calls[0]["id"].startswith("call_")
    assert message.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(model.stream("Weather in Paris?"))
    assert not any("tool_call" in c.content for c in chunks)  # the raw call never leaks into content
    calls = [tc for c in chunks for tc in c.tool_call_chunks]
    assert [(tc["name"], json.loads(tc["args"])) for tc in calls] == [("get_weather", {"city": "Paris"})]
    # The tools were described to the model, which is told how to call them.
    prompt = decoder.calls[0][0].text
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    # Decoding ran under the tool-call grammar of the bound tools.
    kind, request, choice = grammar_requests[0]
    assert (kind, [t["function"]["name"] for t in request["tools"]], choice) == ("tools", ["get_weather"], "auto")
    assert request["response_schema"] is None
    assert decoder.calls[0][1]["constraint"] is not None


def test_unparseable_tool_arguments_raise_a_clear_error(grammar_requests: list) -> None:
    model = ChatParallelBranch(model=tool_answer('{"city": Paris}')).bind_tools([get_weather])
    with pytest.raises(OutputParserException, match="tool call that cannot be parsed.*not valid JSON"):
        model.invoke("Weather in Paris?")


def test_tool_choice_none_neither_describes_nor_parses_tools(grammar_requests: list) -> None:
    decoder = tool_answer()
    message = ChatParallelBranch(model=decoder).bind_tools([get_weather], tool_choice="none").invoke("x")
    assert message.tool_calls == [] and "<tool_call>" in message.content
    assert "get_weather" not in decoder.calls[0][0].text
    assert grammar_requests == [] and "constraint" not in decoder.calls[0][1]


@pytest.mark.parametrize(
    ("method", "kind", "spec"),
    [
        ("json_schema", "json", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        ("json_mode", "json", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        ("function_calling", "tools", None),
    ],
)
def test_structured_output_decodes_under_the_matching_grammar(grammar_requests: list, method: str, kind: str, spec) -> None:
    schema = {"title": "Place", "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = '{"city": "Paris"}' if kind == "json" else '<tool_call>{"name": "Place", "arguments": {"city": "Paris"}}</tool_call>'
    decoder = FakeDecoder(before=[answer])
    result = ChatParallelBranch(model=decoder).with_structured_output(schema, method=method).invoke("Where?")
    assert result == {"city": "Paris"}
    requested_kind, requested_spec, choice = grammar_requests[0]
    assert requested_kind == kind
    if kind == "json":
        assert {k: v for k, v in requested_spec.items() if k != "title"} == spec
    else:
        assert [t["function"]["name"] for t in requested_spec["tools"]] == ["Place"] and choice == "Place"


def test_tools_with_a_response_format_allow_a_call_or_the_structured_answer(grammar_requests: list) -> None:
    """What LangChain's create_agent sends with a ProviderStrategy: tools plus an OpenAI-style response_format."""
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "Out", "schema": schema, "strict": True}}
    decoder = FakeDecoder(before=['{"summary": "sunny"}'])
    bound = ChatParallelBranch(model=decoder).bind_tools([get_weather], strict=True, response_format=response_format)
    message = bound.invoke("Weather?")
    assert message.tool_calls == [] and json.loads(message.content) == {"summary": "sunny"}
    _, request, choice = grammar_requests[0]
    assert request["response_schema"] == schema and choice == "auto"
    assert "Respond only with a JSON object that matches this JSON schema" in decoder.calls[0][0].text


def test_json_mode_without_a_schema_asks_for_any_object(grammar_requests: list) -> None:
    decoder = FakeDecoder(before=['{"a": 1}'])
    message = ChatParallelBranch(model=decoder).bind(response_format={"type": "json_object"}).invoke("x")
    assert json.loads(message.content) == {"a": 1}
    assert grammar_requests == [("json", {"type": "object"}, "")]


def test_repetition_penalty_wraps_the_grammar(grammar_requests: list) -> None:
    from pbd_integrations.penalties import RepetitionPenalty

    decoder = FakeDecoder(before=['{"a": 1}'])
    ChatParallelBranch(model=decoder, repetition_penalty=1.3).bind(response_format={"type": "json_object"}).invoke("x")
    ChatParallelBranch(model=decoder, repetition_penalty=1.3).invoke("x")
    first, second = (options["constraint"]() for _, options in decoder.calls)
    assert isinstance(first, RepetitionPenalty) and first.penalty == 1.3 and first.inner is None  # fake grammar
    assert isinstance(second, RepetitionPenalty) and second.inner is None


def test_structured_output_include_raw_reports_parse_errors(grammar_requests: list) -> None:
    schema = {"title": "Place", "type": "object", "properties": {"city": {"type": "string"}}}
    decoder = FakeDecoder(before=["not json"])
    result = ChatParallelBranch(model=decoder).with_structured_output(schema, include_raw=True).invoke("Where?")
    assert result["parsed"] is None and result["parsing_error"] is not None
    assert result["raw"].content == "not json"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [(None, "auto"), ("auto", "auto"), ("any", "required"), ("required", "required"), (True, "required"),
     ("none", "none"), ("get_weather", "get_weather"), ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")],
)
def test_bind_tools_normalises_tool_choice(choice: Any, expected: str) -> None:
    bound = ChatParallelBranch().bind_tools([get_weather], tool_choice=choice)
    assert bound.kwargs["tool_choice"] == expected
    assert bound.kwargs["tools"][0]["function"]["name"] == "get_weather"


def test_bind_tools_rejects_an_unknown_tool_name() -> None:
    with pytest.raises(ValueError, match="tool_choice 'nope'"):
        ChatParallelBranch().bind_tools([get_weather], tool_choice="nope")


class SlowDecoder(FakeDecoder):
    """Sleeps (like a forward pass, outside the GIL) before every event; records when it stopped."""

    delay: float = 0.02
    finished: threading.Event

    def stream(self, prompt, **options):
        self.finished = threading.Event()
        try:
            for event in super().stream(prompt, **options):
                time.sleep(self.delay)
                yield event
        finally:
            self.finished.set()


async def test_async_decoding_does_not_block_the_event_loop() -> None:
    decoder = SlowDecoder(before=[f" w{i}" for i in range(25)])  # about half a second of "decoding"
    model = ChatParallelBranch(model=decoder)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    message = await model.ainvoke("x")
    elapsed = time.perf_counter() - started
    task.cancel()
    assert message.content == "".join(decoder.before)
    # A blocked loop would tick zero times; a free one ticks through the whole decode.
    assert ticks >= 0.3 * elapsed / 0.005


async def test_leaving_astream_early_stops_the_decode() -> None:
    decoder = SlowDecoder(before=[f" w{i}" for i in range(200)])
    stream = ChatParallelBranch(model=decoder).astream("x")
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(200):  # the worker closes the engine stream long before 200 tokens (4 s)
        if decoder.finished.is_set():
            break
        await asyncio.sleep(0.01)
    assert decoder.finished.is_set()
