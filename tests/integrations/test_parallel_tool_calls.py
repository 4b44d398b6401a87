"""Parallel tool calls: the model lists the calls, then every call's arguments decode as a branch.

A scripted model (`scripted_model.ScriptedLM`, byte tokenizer, real llguidance
grammars) lists three calls and writes each call's arguments; the adapters must
return one message with the three calls in the listed order, and the
text that goes back into the history must be the model's own multi-call format.
The last test does the same on Qwen2.5-Coder-0.5B (slow).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from scripted_model import ScriptedLM

from pbd_core import ParallelBranchDecoder, RawPrompt
from pbd_core.plan_format import render_title

pytest.importorskip("llguidance")

CITIES = ["Paris", "London", "Tokyo"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "


def native(cities: list[str]) -> str:
    """The calls in the wire format, one per line: what the model writes (and the history holds)."""
    return "\n".join(f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}\n</tool_call>' for c in cities)


def call_list(cities: list[str]) -> str:
    return "[" + ", ".join(f'get_weather(city="{c}")' for c in cities) + "]"


def preferences(*pairs: tuple[str, str]):
    """Like `scripted_model.rules`, but every rule in progress is a choice, longest match first.

    The same context may go on two ways (the list of calls, or a call in the wire format); the
    grammar of the stream picks the one it allows, as it would from a real model's distribution.
    """

    def script(text: str) -> list[str]:
        found: list[tuple[int, str]] = []
        for after, write in pairs:
            for i in range(len(write) - 1, -1, -1):
                if text.endswith(after + write[:i]):
                    found.append((len(after) + i, write[i]))
                    break
        return [char for _, char in sorted(found, key=lambda f: -f[0])]

    return script


def weather_decoder(listed: list[str], written: list[str] | None = None) -> ParallelBranchDecoder:
    """Lists ``listed`` as calls, writes each planned call's arguments; writes ``written`` natively."""
    return scripted(
        ("[assistant] ", call_list(listed)),
        ("[assistant] ", native(written or listed)),
        *((call_seed("get_weather", f'city="{c}"'), json.dumps({"city": c})) for c in CITIES),
    )


def scripted(*pairs: tuple[str, str]) -> ParallelBranchDecoder:
    from tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return ParallelBranchDecoder(ScriptedLM(preferences(*pairs), tokenizer=tokenizer), tokenizer)


def call_seed(tool: str, hint: str) -> str:
    """What a call's branch is seeded with: its title, then the call in the wire format up to its arguments."""
    return f'####{render_title(f"{tool}: {hint}")}:\n<tool_call>\n{{"name": "{tool}", "arguments": '


# --------------------------------------------------------------------------- LangChain


@pytest.fixture
def lc():
    pytest.importorskip("langchain_core")
    from langchain_core.tools import tool

    from pbd_integrations import ChatParallelBranch

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    return ChatParallelBranch, get_weather


def test_three_listed_calls_are_one_message_with_three_calls_in_order(lc) -> None:
    import jsonschema

    ChatParallelBranch, get_weather = lc
    llm = ChatParallelBranch(model=weather_decoder(CITIES), max_tokens=600)
    message = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris, London and Tokyo?")
    assert message.content == ""
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": c}) for c in CITIES]
    schema = get_weather.tool_call_schema.model_json_schema()
    for call in message.tool_calls:
        jsonschema.validate(call["args"], schema)
    assert len({c["id"] for c in message.tool_calls}) == 3
    meta = message.response_metadata
    assert meta["finish_reason"] == "tool_calls"
    assert [b["title"] for b in meta["branches"]] == [f'get_weather: city="{c}"' for c in CITIES]
    stats = meta["stats"]
    assert stats["max_live_branches"] == 3
    # One token of every call per forward pass: the calls' stage takes as many passes as the
    # longest call has tokens (plus the pass that starts them), not the sum.
    longest = max(b["tokens"] for b in meta["branches"])
    assert stats["stage_forward_passes"]["parallel"] <= longest + 2
    assert stats["stage_tokens"]["parallel"] == sum(b["tokens"] for b in meta["branches"])


def test_streaming_adds_up_to_the_same_calls(lc) -> None:
    ChatParallelBranch, get_weather = lc
    llm = ChatParallelBranch(model=weather_decoder(CITIES), max_tokens=600).bind_tools([get_weather], tool_choice="any")
    chunks = list(llm.stream("Weather in Paris, London and Tokyo?"))
    assert "".join(c.content for c in chunks) == ""
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": c}) for c in CITIES]


def test_parallel_tool_calls_false_makes_at_most_one_call(lc) -> None:
    ChatParallelBranch, get_weather = lc
    decoder = weather_decoder(CITIES)
    llm = ChatParallelBranch(model=decoder, max_tokens=600)
    message = llm.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=False).invoke("Weather?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert message.response_metadata["branches"] == []


def test_plain_decoding_writes_the_same_calls_one_after_another(lc) -> None:
    """``parallel=False`` is the baseline: the same calls, written in the wire format, one per line."""
    ChatParallelBranch, get_weather = lc
    decoder = weather_decoder(CITIES)
    parallel = ChatParallelBranch(model=decoder, max_tokens=600).bind_tools([get_weather], tool_choice="any")
    plain = ChatParallelBranch(model=decoder, max_tokens=600, parallel=False).bind_tools([get_weather], tool_choice="any")
    fast, slow = parallel.invoke("Weather?"), plain.invoke("Weather?")
    assert [c["args"] for c in slow.tool_calls] == [c["args"] for c in fast.tool_calls] == [{"city": c} for c in CITIES]
    assert slow.response_metadata["raw_text"] == fast.response_metadata["raw_text"] == native(CITIES)
    assert fast.response_metadata["forward_passes"] < slow.response_metadata["forward_passes"]


def test_one_listed_call_is_decoded_exactly_as_without_a_list() -> None:
    from pbd_integrations.chat import render_chat
    from pbd_integrations.grammar import tool_call_constraint
    from pbd_integrations.parallel_tools import tool_call_plan

    decoder = weather_decoder(["Paris"])
    prompt = RawPrompt(render_chat(decoder, [{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]))
    single = tool_call_constraint(decoder.tokenizer, [WEATHER], "required")
    plan = tool_call_plan(decoder.tokenizer, [WEATHER], "required")
    alone = decoder.generate(prompt, constraint=single, max_new_tokens=600)
    planned = decoder.generate(prompt, constraint=single, tool_calls=plan, max_new_tokens=600)
    assert planned.text == alone.text == native(["Paris"])
    assert planned.token_ids == alone.token_ids and planned.branches == []
    listed = len(call_list(["Paris"]))  # the list's tokens (one byte each) are counted, and no more
    assert planned.stats.generated_tokens == alone.stats.generated_tokens + listed
    assert planned.stats.stage_tokens["plan"] == planned.stats.generated_tokens


def test_the_message_goes_back_into_the_history_in_the_models_own_format(lc) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    ChatParallelBranch, get_weather = lc
    decoder = weather_decoder(CITIES)
    llm = ChatParallelBranch(model=decoder, max_tokens=600).bind_tools([get_weather], tool_choice="any")
    question = HumanMessage("Weather in Paris, London and Tokyo?")
    message = llm.invoke([question])
    history = [question, message] + [
        ToolMessage("sunny", tool_call_id=c["id"], name=c["name"]) for c in message.tool_calls
    ]
    from pbd_integrations.chat import render_chat
    from pbd_integrations.langchain.chat_models import _convert_messages

    prompt = render_chat(decoder, _convert_messages(history), tools=[WEATHER])
    assert f"[assistant] {message.response_metadata['raw_text']}\n" in prompt  # exactly what was decoded


def test_with_several_tools_the_model_names_the_first_tool_in_its_own_format(lc) -> None:
    """The first call's tool is chosen where the model writes calls (``{"name": "``), not at ``[``."""
    ChatParallelBranch, get_weather = lc
    from langchain_core.tools import tool

    @tool
    def lookup_order(order_id: str) -> str:
        """Look up an order by its id."""
        return "shipped"

    ids = ["A17", "B22"]
    decoder = scripted(
        ('[assistant] <tool_call>\n{"name": "', "lookup_order"),
        ("[assistant] [", 'get_weather(city="A17")]'),  # what it would list on its own: the wrong tool
        ("[assistant] [lookup_order(", 'order_id="A17"), lookup_order(order_id="B22")]'),
        *((call_seed("lookup_order", f'order_id="{i}"'), json.dumps({"order_id": i})) for i in ids),
    )
    llm = ChatParallelBranch(model=decoder, max_tokens=600).bind_tools([get_weather, lookup_order], tool_choice="any")
    message = llm.invoke("Look up orders A17 and B22.")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("lookup_order", {"order_id": i}) for i in ids]
    assert message.response_metadata["stats"]["stage_tokens"]["plan"] == len("lookup_order") + len(
        'order_id="A17"), lookup_order(order_id="B22")]'
    )


def test_caller_titles_skip_the_list_and_name_a_bound_tool() -> None:
    from pbd_integrations.chat import render_chat
    from pbd_integrations.grammar import tool_call_constraint
    from pbd_integrations.parallel_tools import tool_call_plan

    decoder = weather_decoder(["Paris"])
    prompt = RawPrompt(render_chat(decoder, [{"role": "user", "content": "Weather?"}], tools=[WEATHER]))
    single = tool_call_constraint(decoder.tokenizer, [WEATHER], "required")
    plan = tool_call_plan(decoder.tokenizer, [WEATHER], "required")
    titles = [f'get_weather: city="{c}"' for c in reversed(CITIES)]
    result = decoder.generate(prompt, constraint=single, tool_calls=plan, branches=titles, max_new_tokens=300)
    assert result.text == native(list(reversed(CITIES)))
    assert result.stats.stage_tokens["plan"] == 0 and [b.title for b in result.branches] == titles
    with pytest.raises(ValueError, match="tool-call title 'lookup: 7'"):
        decoder.generate(prompt, constraint=single, tool_calls=plan, branches=["lookup: 7"])


def test_the_list_grammar_holds_one_value_per_call() -> None:
    import llguidance

    from pbd_integrations.parallel_tools import list_grammar, read_list

    functions = [
        WEATHER["function"],
        {"name": "now", "parameters": {"type": "object", "properties": {}}},
        {"name": "order", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}},
        {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}},
    ]
    grammar = llguidance.LLMatcher.grammar_from_lark(list_grammar(functions, max_calls=3))
    from pbd_integrations.grammar import ll_tokenizer
    from tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer()

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
        return all(matcher.consume_token(t) for t in tokenizer(text)["input_ids"]) and matcher.is_accepting()

    assert accepts('[get_weather(city="Paris"), now(), order(id=17)]')
    assert not accepts('[get_weather(city="Paris, London")]')  # one value per call
    assert not accepts('[order(id="17")]') and not accepts("[get_weather(city=Paris)]")  # typed values
    assert not accepts("[order(id=17b)]") and not accepts("[order(id=1.5)]")
    assert accepts("[add(a=2, b=3), add(a=10)]") and not accepts("[add(a=2, b=3, a=4)]")  # as many as it has
    assert not accepts("[now(), now(), now(), now()]")  # at most max_calls
    assert read_list(("get_weather", "now", "add"), '[get_weather(city="Paris"), now(), add(a=2, b=3), get_weather(city="Lo') == [
        'get_weather: city="Paris"',
        "now",
        "add: a=2, b=3",
    ]


# --------------------------------------------------------------------------- LlamaIndex


def test_llama_index_returns_one_tool_call_block_per_listed_call() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.core.tools import FunctionTool

    from pbd_integrations.llama_index import ParallelBranchLLM

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    tool = FunctionTool.from_defaults(fn=get_weather)
    llm = ParallelBranchLLM(model=weather_decoder(CITIES), max_tokens=600)
    response = llm.chat_with_tools([tool], user_msg="Weather?", tool_required=True, allow_parallel_tool_calls=True)
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_name, b.tool_kwargs) for b in blocks] == [("get_weather", {"city": c}) for c in CITIES]
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(response)] == [{"city": c} for c in CITIES]
    assert [b["title"] for b in response.raw["branches"]] == [f'get_weather: city="{c}"' for c in CITIES]
    single = llm.chat_with_tools([tool], user_msg="Weather?", tool_required=True)  # LlamaIndex's default: one call
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(single)] == [{"city": "Paris"}]
    assert single.raw["branches"] == []


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def qwen() -> Any:
    from pbd_core.loading import is_installed

    if not is_installed("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b is not installed")
    return ParallelBranchDecoder.from_pretrained("qwen2.5-coder-0.5b")


@pytest.mark.slow
def test_qwen_calls_get_weather_once_for_each_of_three_cities(qwen, lc) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    from pbd_integrations.chat import render_chat
    from pbd_integrations.langchain.chat_models import _convert_messages

    ChatParallelBranch, get_weather = lc
    llm = ChatParallelBranch(model=qwen, temperature=0, max_tokens=300).bind_tools([get_weather], tool_choice="any")
    question = HumanMessage("What's the weather in Paris, London and Tokyo?")
    message = llm.invoke([question])
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": c}) for c in CITIES]
    assert message.response_metadata["stats"]["max_live_branches"] == 3
    # The message goes back into the history as Qwen2.5's template writes three calls: the decoded text.
    history = [question, message, *(ToolMessage("sunny", tool_call_id=c["id"]) for c in message.tool_calls)]
    prompt = render_chat(qwen, _convert_messages(history), tools=[WEATHER])
    assert f"<|im_start|>assistant\n{message.response_metadata['raw_text']}<|im_end|>" in prompt
    # At most one call when parallel calls are off.
    single = llm.invoke([question], parallel_tool_calls=False)
    assert [c["args"] for c in single.tool_calls] == [{"city": "Paris"}]


@pytest.mark.slow
def test_qwen_grammar_takes_its_tool_call_token(qwen) -> None:
    """Qwen2.5 writes ``<tool_call>`` as one added token, which llguidance treats as special."""
    from pbd_integrations.grammar import tool_call_constraint

    start = qwen.tokenizer("<tool_call>", add_special_tokens=False)["input_ids"]
    assert len(start) == 1
    constraint = tool_call_constraint(qwen.tokenizer, [WEATHER], "required")()
    assert bool(constraint.allowed_tokens()[start[0]])
    constraint.advance(start[0])  # used to fail: the mask let it through, the matcher refused it
