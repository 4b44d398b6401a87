"""`ParallelBranchLLM` against a scripted decoder: the LlamaIndex contract without a model."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

import pbd_integrations
from pbd_integrations import registry
from pbd_integrations.llama_index import ParallelBranchLLM

USER = [ChatMessage(role=MessageRole.USER, content="Hi")]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD = FunctionTool.from_defaults(fn=add)


@pytest.fixture(autouse=True)
def grammar_calls(monkeypatch):
    """Record tool-call grammars instead of compiling them (the fake tokenizer has no vocabulary)."""
    import pbd_integrations.grammar as grammar

    calls = []

    def fake_constraint(tokenizer, tools, tool_choice, response_schema=None):
        calls.append(([t["function"]["name"] for t in tools], tool_choice))
        return lambda: None

    monkeypatch.setattr(grammar, "tool_call_constraint", fake_constraint)
    return calls


@pytest.fixture
def json_schemas(monkeypatch):
    """Record the schemas of JSON answers instead of compiling their grammars."""
    import pbd_integrations.llama_index.base as base

    schemas = []
    monkeypatch.setattr(base, "cached_json_constraint", lambda tokenizer, spec: schemas.append(json.loads(spec)) or (lambda: None))
    return schemas


@pytest.fixture
def make_llm(make_decoder):
    def make(answers=("Hello there friend.",), delay=0.0, **fields):
        decoder = make_decoder(answers=list(answers), delay=delay)
        return ParallelBranchLLM(model=decoder, **fields), decoder

    return make


# ---------------------------------------------------------------- construction


def test_is_exported_lazily_from_the_package():
    assert pbd_integrations.ParallelBranchLLM is ParallelBranchLLM
    assert issubclass(ParallelBranchLLM, FunctionCallingLLM)


def test_construction_loads_nothing():
    before = registry.loaded_sources()
    llm = ParallelBranchLLM(model="no/such/folder")
    assert registry.loaded_sources() == before
    assert llm.model == "no/such/folder"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_branch_tokens": 0}, "max_branch_tokens must be a positive int"),
        ({"temperature": -1.0}, "temperature must be a number >= 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"merge": "fold"}, "merge"),
        ({"branches": []}, "branches must not be empty"),
        ({"branches": ["a:b", "\n"]}, "branch title 1 is only whitespace"),
        ({"model": 42}, "model must be a model source string or a ParallelBranchDecoder"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_bad_fields_fail_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        ParallelBranchLLM(**fields)


def test_metadata_comes_from_the_decoder(make_llm):
    llm, decoder = make_llm(max_tokens=77)
    meta = llm.metadata
    assert meta.context_window == decoder.context_window
    assert meta.num_output == 77
    assert meta.model_name == "fake-model"
    assert meta.is_chat_model and meta.is_function_calling_model


def test_a_decoder_instance_is_used_as_is_and_serialized_as_its_source(make_llm):
    llm, decoder = make_llm()
    assert llm.decoder is decoder
    assert llm.model == "fake"
    assert llm.to_dict()["model"] == "fake"
    assert llm.to_dict()["class_name"] == "ParallelBranchLLM"


# ---------------------------------------------------------------- options per call


def test_fields_are_the_default_options_and_calls_override_them(make_llm):
    llm, decoder = make_llm(max_tokens=30, stop=["END"])
    llm.chat(USER)
    llm.chat(USER, max_tokens=5, branches=["Cats", "Dogs"], merge="recompute", stop=["\n\n"])
    llm.chat(USER, max_new_tokens=7)
    first, second, third = decoder.calls
    assert (first["max_new_tokens"], first["stop"], first["branches"]) == (30, ["END"], None)
    assert (second["max_new_tokens"], second["branches"], second["merge"]) == (5, ["Cats", "Dogs"], "recompute")
    assert second["stop"] == ["END", "\n\n"]  # a per-call stop adds to the field's
    assert third["max_new_tokens"] == 7  # the engine's own name works too


def test_unknown_option_fails_before_decoding_and_names_the_known_ones(make_llm):
    llm, decoder = make_llm()
    with pytest.raises(ValueError, match=r"unknown decoding option\(s\) \['max_length'\].*max_new_tokens"):
        llm.stream_chat(USER, max_length=5)
    assert decoder.calls == []


def test_bad_option_value_fails_before_decoding(make_llm):
    llm, decoder = make_llm()
    with pytest.raises(ValueError, match="top_k"):
        llm.complete("Hi", top_k=-2)
    assert decoder.calls == []


def test_repetition_penalty_becomes_a_constraint_and_wraps_a_tool_grammar(make_llm, grammar_calls):
    from pbd_integrations.penalties import RepetitionPenalty

    llm, decoder = make_llm(repetition_penalty=1.3)
    llm.chat(USER)
    llm.chat(USER, repetition_penalty=1.0)
    llm.chat_with_tools([ADD], user_msg="x", tool_required=True, repetition_penalty=1.1)
    plain, unchanged, tool = decoder.calls
    assert isinstance(plain["constraint"](), RepetitionPenalty) and plain["constraint"]().penalty == 1.3
    assert unchanged.get("constraint") is None
    assert tool["constraint"]().penalty == 1.1 and grammar_calls == [(["add"], "required")]


@pytest.mark.parametrize("penalty", [0, -1.0, "high"])
def test_bad_repetition_penalty_is_a_clear_error(make_llm, penalty):
    llm, decoder = make_llm()
    with pytest.raises(ValueError, match="repetition_penalty"):
        llm.chat(USER, repetition_penalty=penalty)
    assert decoder.calls == []


def test_prompt_is_the_rendered_chat_template(make_llm):
    llm, decoder = make_llm(plan_instructions=False)  # planning instructions: test_the_llm_plans_by_default
    llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="Be brief."), *USER])
    assert decoder.calls[0]["prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------- results, streams, completion


def test_chat_is_the_aggregate_of_stream_chat(make_llm):
    llm, _ = make_llm(answers=[("Two:", [("A", " one"), ("B", " two three")], " done")])
    chunks = list(llm.stream_chat(USER))
    response = llm.chat(USER)
    assert "".join(c.delta for c in chunks) == response.message.content == chunks[-1].message.content
    assert response.message.content == "Two:\n\n**A**\n\none\n\n**B**\n\ntwo three\n\ndone"
    assert response.raw["raw_text"] == "Two:####A: one####B: two three####%%%% done"
    assert response.raw == chunks[-1].raw
    assert response.raw["parallel"] and len(response.raw["branches"]) == 2


def test_complete_and_stream_complete_match_chat(make_llm):
    llm, _ = make_llm(answers=["One two three."])
    completion = llm.complete("Count.")
    streamed = list(llm.stream_complete("Count."))
    assert completion.text == "One two three." == streamed[-1].text
    assert "".join(c.delta for c in streamed) == completion.text
    assert completion.raw["usage"]["completion_tokens"] == 3


async def test_async_methods_match_the_sync_ones(make_llm):
    llm, _ = make_llm(answers=["One two three."])
    assert (await llm.achat(USER)).message.content == "One two three."
    assert (await llm.acomplete("x")).text == "One two three."
    deltas = [c.delta async for c in await llm.astream_chat(USER)]
    assert "".join(deltas) == "One two three."
    texts = [c.text async for c in await llm.astream_complete("x")]
    assert texts[-1] == "One two three."


async def test_async_calls_leave_the_event_loop_free(make_llm):
    # Every fake token sleeps 20 ms in the decoding thread; a blocked loop could not tick meanwhile.
    llm, _ = make_llm(answers=[" ".join(["word"] * 10)], delay=0.02)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await llm.achat(USER)
    async for _ in await llm.astream_chat(USER):
        pass
    elapsed = time.perf_counter() - start
    task.cancel()
    assert elapsed >= 0.4
    assert ticks >= 0.4 / 0.005 / 4  # at least a quarter of the ticks a free loop gets


async def test_the_first_async_call_loads_the_weights_off_the_loop(make_decoder, monkeypatch):
    import pbd_integrations.llama_index.base as base

    def slow_load(model, **kwargs):
        time.sleep(0.3)
        return make_decoder()

    monkeypatch.setattr(base, "get_decoder", slow_load)
    llm = ParallelBranchLLM(model="somewhere")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    response = await llm.achat(USER)
    task.cancel()
    assert response.message.content == "Hello there friend."
    assert ticks >= 15  # 0.3 s of loading: a blocked loop would not tick at all


async def test_two_async_calls_run_concurrently_with_the_loop(make_llm):
    llm, _ = make_llm(answers=["a b c d e"], delay=0.01)
    first, second = await asyncio.gather(llm.achat(USER), llm.achat(USER))
    assert first.message.content == second.message.content == "a b c d e"


async def test_async_errors_reach_the_caller(make_llm):
    llm, decoder = make_llm()

    def broken(prompt, **options):
        raise RuntimeError("model exploded")

    decoder.stream = broken
    with pytest.raises(RuntimeError, match="model exploded"):
        await llm.achat(USER)


async def test_leaving_an_async_stream_early_stops_the_decoding_thread(make_llm):
    llm, _ = make_llm(answers=[" ".join(["w"] * 200)], delay=0.005)
    produced = []
    original = llm.decoder.stream

    def counting(prompt, **options):
        for event in original(prompt, **options):
            produced.append(event)
            yield event

    llm.decoder.stream = counting
    stream = await llm.astream_chat(USER)
    async for _ in stream:
        break
    await stream.aclose()
    await asyncio.sleep(1.5)  # long enough for a thread that kept decoding to reach all 200 events
    assert len(produced) < 100


def test_one_callback_event_per_call_with_usage(make_llm):
    counter = TokenCountingHandler(tokenizer=lambda text: text.split())
    llm, _ = make_llm(answers=["One two three."], callback_manager=CallbackManager([counter]))
    llm.complete("Count to three.")
    list(llm.stream_chat(USER))
    assert len(counter.llm_token_counts) == 2
    # The counter reads raw["usage"], which the fake fills with whitespace token counts.
    assert [c.completion_token_count for c in counter.llm_token_counts] == [3, 3]


# ---------------------------------------------------------------- tools


def test_prepare_chat_with_tools_renders_tools_into_the_prompt(make_llm):
    llm, decoder = make_llm()
    kwargs = llm._prepare_chat_with_tools([ADD], user_msg="What is 2+3?", chat_history=[])
    assert kwargs["tools"][0]["function"]["name"] == "add"
    assert kwargs["messages"][-1].content == "What is 2+3?"
    llm.chat(**kwargs)
    prompt = decoder.calls[0]["prompt"]
    # The fake ChatML template ignores tools, so they are described in the system message.
    assert prompt.startswith("<|im_start|>system\n# Tools")
    assert '"name": "add"' in prompt and "<tool_call>" in prompt


def test_chat_with_tools_returns_tool_call_blocks_and_selections(make_llm):
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    llm, _ = make_llm(answers=[call])
    response = llm.chat_with_tools([ADD], user_msg="What is 2+3?")
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("add", {"a": 2, "b": 3})
    (selection,) = llm.get_tool_calls_from_response(response)
    assert (selection.tool_id, selection.tool_name) == (block.tool_call_id, "add")
    assert selection.tool_kwargs == {"a": 2, "b": 3}


def test_only_the_first_call_is_kept_unless_parallel_calls_are_allowed(make_llm):
    calls = "".join(
        f'<tool_call>{{"name": "add", "arguments": {{"a": {i}, "b": 0}}}}</tool_call>' for i in range(2)
    )
    llm, _ = make_llm(answers=[calls])
    single = llm.chat_with_tools([ADD], user_msg="x")
    double = llm.chat_with_tools([ADD], user_msg="x", allow_parallel_tool_calls=True)
    assert len(llm.get_tool_calls_from_response(single)) == 1
    assert len(single.message.additional_kwargs["tool_calls"]) == 1
    assert [s.tool_kwargs["a"] for s in llm.get_tool_calls_from_response(double)] == [0, 1]


def test_predict_and_call_runs_the_tool(make_llm):
    llm, _ = make_llm(answers=['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'])
    assert llm.predict_and_call([ADD], user_msg="What is 2+3?").response == "5"


def test_tool_results_go_back_into_the_conversation(make_llm):
    llm, decoder = make_llm()
    history = [
        ChatMessage(role=MessageRole.USER, content="What is 2+3?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs={"a": 2, "b": 3})],
        ),
        ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    llm.chat_with_tools([ADD], chat_history=history)
    prompt = decoder.calls[0]["prompt"]
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in prompt
    assert "<tool_response>\n5\n</tool_response>" in prompt


def test_no_tool_call_is_an_error_only_when_required(make_llm):
    llm, _ = make_llm(answers=["I will not call anything."])
    response = llm.chat_with_tools([ADD], user_msg="x")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected at least one tool call"):
        llm.get_tool_calls_from_response(response)


def test_tool_choice_none_offers_no_tools(make_llm):
    llm, decoder = make_llm()
    llm.chat_with_tools([ADD], user_msg="x", tool_choice="none")
    assert "# Tools" not in decoder.calls[0]["prompt"]


def test_bad_tool_choice_is_a_clear_error(make_llm):
    llm, _ = make_llm()
    with pytest.raises(ValueError, match="tool_choice"):
        llm.chat_with_tools([ADD], user_msg="x", tool_choice=3)


@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")  # from the workflows package
@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_round_trip(make_llm, streaming):
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    call = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    llm, decoder = make_llm(answers=[call, "The sum is 5."])
    agent = FunctionAgent(tools=[ADD], llm=llm, streaming=streaming)
    handler = agent.run("What is 2+3?")
    results = [ev.tool_output.content async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    assert results == ["5"]
    assert str(await handler) == "The sum is 5."
    first, second = decoder.calls
    assert "<tool_response>\n5\n</tool_response>" in second["prompt"]


@pytest.mark.parametrize(
    ("call_kwargs", "forced"),
    [
        ({"tool_required": True}, "required"),
        ({"tool_required": True, "tool_choice": "auto"}, "required"),
        ({"tool_choice": "required"}, "required"),
        ({"tool_choice": "add"}, "add"),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, "add"),
    ],
)
def test_a_required_call_decodes_under_the_tool_grammar_without_branches(make_llm, grammar_calls, call_kwargs, forced):
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    llm, decoder = make_llm(answers=[call], force_plan=True)
    llm.chat_with_tools([ADD], user_msg="x", **call_kwargs)
    assert grammar_calls == [(["add"], forced)]
    assert decoder.calls[0]["constraint"] is not None
    assert decoder.calls[0]["parallel"] is False
    assert decoder.calls[0]["force_plan"] is False  # a forced "####" would break the call grammar


def test_an_optional_call_is_still_decoded_under_the_grammar_in_auto_mode(make_llm, grammar_calls):
    llm, decoder = make_llm()
    llm.chat_with_tools([ADD], user_msg="x")
    llm.chat_with_tools([ADD], user_msg="x", tool_choice="auto")
    llm.chat(USER)  # no tools, no grammar
    assert grammar_calls == [(["add"], "auto"), (["add"], "auto")]
    assert [c.get("constraint") is not None for c in decoder.calls] == [True, True, False]
    assert [c["parallel"] for c in decoder.calls] == [True, True, True]  # text answers may still branch


class City(BaseModel):
    """A city."""

    name: str
    country: str


CAPITAL = PromptTemplate("Capital of {country}?")


def test_structured_predict_decodes_json_under_the_output_class_schema(make_llm, json_schemas):
    llm, decoder = make_llm(answers=['{"name": "Paris", "country": "France"}'])
    assert llm.structured_predict(City, CAPITAL, country="France") == City(name="Paris", country="France")
    assert json_schemas == [City.model_json_schema()]
    (call,) = decoder.calls
    assert call["constraint"] is not None
    assert "matches this JSON schema" in call["prompt"] and "Capital of France?" in call["prompt"]
    assert "<tools>" not in call["prompt"]  # no function call: the schema path is measured better on small models


async def test_structured_predict_async_and_streaming_use_the_same_json_path(make_llm, json_schemas):
    llm, decoder = make_llm(answers=['{"name": "Paris", "country": "France"}'])
    assert await llm.astructured_predict(City, CAPITAL, country="France") == City(name="Paris", country="France")
    partials = list(llm.stream_structured_predict(City, CAPITAL, country="France"))
    assert len(partials) > 2 and partials[0].model_dump().get("country") is None  # objects grow as the JSON does
    assert City.model_validate(partials[-1].model_dump()) == City(name="Paris", country="France")
    apartials = [p async for p in await llm.astream_structured_predict(City, CAPITAL, country="France")]
    assert City.model_validate(apartials[-1].model_dump()) == City(name="Paris", country="France")
    assert len(json_schemas) == len(decoder.calls) == 3


def test_structured_llm_chat_uses_the_json_path(make_llm, json_schemas):
    llm, _ = make_llm(answers=['{"name": "Oslo", "country": "Norway"}'])
    response = llm.as_structured_llm(City).chat([ChatMessage(role=MessageRole.USER, content="Capital of Norway?")])
    assert response.raw == City(name="Oslo", country="Norway")


def test_structured_predict_in_function_mode_offers_the_class_as_a_tool(make_llm, grammar_calls, json_schemas):
    from llama_index.core.types import PydanticProgramMode

    call = '<tool_call>{"name": "City", "arguments": {"name": "Paris", "country": "France"}}</tool_call>'
    llm, decoder = make_llm(answers=[call], pydantic_program_mode=PydanticProgramMode.FUNCTION)
    assert llm.structured_predict(City, CAPITAL, country="France") == City(name="Paris", country="France")
    *_, last = llm.stream_structured_predict(City, CAPITAL, country="France")
    assert City.model_validate(last.model_dump()) == City(name="Paris", country="France")
    assert decoder.calls[0]["prompt"].count('"name": "City"') == 1  # the output class is offered as a tool
    assert json_schemas == []


def test_structured_predict_names_the_budget_when_a_cut_left_a_field_out():
    from llama_index.core.base.llms.types import ChatResponse

    from pbd_integrations.llama_index.base import _parse_structured

    cut = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content='{"name": "Paris"}'), raw={"finish_reason": "length"})
    with pytest.raises(ValueError, match="cut by max_tokens"):
        _parse_structured(City, cut)
    whole = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content='{"name": "Paris"}'), raw={"finish_reason": "stop"})
    with pytest.raises(ValueError, match="does not validate as City") as error:
        _parse_structured(City, whole)
    assert "max_tokens" not in str(error.value)


def test_response_format_is_a_per_call_option(make_llm, json_schemas):
    llm, decoder = make_llm(answers=['{"a": 1}'])
    response = llm.chat(USER, response_format={"type": "json_object"})
    assert json.loads(response.message.content) == {"a": 1}
    assert json_schemas == [{"type": "object"}]
    with pytest.raises(ValueError, match="response_format type"):
        llm.chat(USER, response_format={"type": "yaml"})


def test_text_answer_keeps_its_text_block(make_llm):
    llm, _ = make_llm(answers=["Plain answer."])
    response = llm.chat_with_tools([ADD], user_msg="x")
    assert [type(b) for b in response.message.blocks] == [TextBlock]
    assert json.dumps(response.raw["usage"])  # usage is plain JSON


def test_the_llm_plans_by_default_and_can_be_told_not_to(make_llm):
    from pbd_integrations.prompts import PLANNING_SYSTEM_PROMPT

    llm, decoder = make_llm()
    llm.chat(USER)
    assert PLANNING_SYSTEM_PROMPT in decoder.calls[-1]["prompt"]
    llm.complete("Check each record.", plan_instructions=False)
    llm.complete("Compare tea and coffee.", branches=["Tea", "Coffee"])
    assert "####%%%%" not in decoder.calls[-1]["prompt"] and "####%%%%" not in decoder.calls[-2]["prompt"]
    quiet, decoder = make_llm(plan_instructions=False)
    quiet.chat(USER)
    assert "####%%%%" not in decoder.calls[-1]["prompt"]
