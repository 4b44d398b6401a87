"""The remote executor, specified against a scripted OpenAI-compatible server (protocol level).

The same script is decoded by the in-process executor (`ScriptedLM`) and by
the remote one (`FakeServer`): one stage logic, so the answers must agree.
A real vLLM server is exercised in ``tests/server``.
"""

import asyncio
import socket

import pytest
from fake_completions_server import FakeServer
from scripted_model import FRUIT, FRUIT_BODIES, PLAN, decoder_for, rules

from pbd_core import FinalEvent, ParallelBranchDecoder, RawPrompt
from pbd_core.executors.remote import RemoteExecutor, RemoteExecutorError, completion_body, parse_sse_line
from pbd_core.options import DecodeOptions

SCRIPT = (*PLAN, *FRUIT_BODIES, ("####%%%%", "\nDone."))


def remote_decoder(server: FakeServer) -> ParallelBranchDecoder:
    executor = RemoteExecutor("http://fake:8000/v1", tokenizer=server.tokenizer, **server.transports())
    return ParallelBranchDecoder.from_executor(executor)


def summary(result):
    return result.text, result.raw_text, [(b.title, b.text, b.finish_reason) for b in result.branches], result.finish_reason


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"branches": FRUIT},
        {"branches": FRUIT, "parallel": False},
        {"branches": FRUIT, "stop": ["yellow"]},
        {"branches": FRUIT, "max_branch_tokens": 4},
        {"max_new_tokens": 30},
        {"parallel": False},
    ],
    ids=["planned", "caller-branches", "sequential", "stop-string", "branch-budget", "answer-budget", "plain"],
)
def test_remote_answer_equals_the_in_process_answer(options):
    local = decoder_for(*SCRIPT, leak_guard=FRUIT).generate(RawPrompt("Q\n"), **options)
    remote = remote_decoder(FakeServer(rules(*SCRIPT, leak_guard=FRUIT))).generate(RawPrompt("Q\n"), **options)
    assert summary(remote) == summary(local)


def test_branches_are_requests_on_one_token_identical_prefix():
    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    result = remote_decoder(server).generate(RawPrompt("Q\n"), branches=FRUIT)
    colon = server.tokenizer(":")["input_ids"][0]
    branch_requests = [r for r in server.requests if r["prompt"][-1] == colon]
    assert len(branch_requests) == 3
    prefix = server.tokenizer("Q\n")["input_ids"]
    # (sent from one worker each: they reach the server in any order)
    expected = sorted(prefix + server.tokenizer(f"####{title}:")["input_ids"] for title in FRUIT)
    assert sorted(r["prompt"] for r in branch_requests) == expected
    for request in branch_requests:
        assert "####" in request["stop"] and request["include_stop_str_in_output"] is True
        assert request["return_token_ids"] is True and request["stream"] is True
    # The merge is one completion of prefix + branches in reading order + the close marker.
    merge = server.requests[-1]
    assert server.tokenizer.decode(merge["prompt"]) == "Q\n" + result.raw_text[: result.raw_text.index("%%%%") + 5]


def test_async_decoding_gives_the_same_answer_without_threads(monkeypatch):
    import threading

    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    decoder = remote_decoder(server)
    sync = decoder.generate(RawPrompt("Q\n"), branches=FRUIT)
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name) or start(self))
    result = asyncio.run(decoder.agenerate(RawPrompt("Q\n"), branches=FRUIT))
    assert summary(result) == summary(sync) and started == []


def test_without_local_tokenizer_files_the_servers_tokenize_endpoints_are_used():
    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    executor = RemoteExecutor("http://fake:8000", **server.transports())  # the model's files are not readable here
    assert type(executor.tokenizer).__name__ == "ServerTokenizer"
    remote = ParallelBranchDecoder.from_executor(executor).generate(RawPrompt("Q\n"), branches=FRUIT)
    local = decoder_for(*SCRIPT, leak_guard=FRUIT).generate(RawPrompt("Q\n"), branches=FRUIT)
    assert summary(remote) == summary(local)


def test_reuse_merge_is_refused_with_a_clear_error():
    decoder = remote_decoder(FakeServer(rules(*SCRIPT)))
    with pytest.raises(ValueError, match='merge="reuse" is not available on a server .*http://fake:8000'):
        decoder.generate(RawPrompt("Q\n"), branches=FRUIT, merge="reuse")


def test_unknown_model_names_the_server_and_what_it_serves():
    server = FakeServer(rules(*SCRIPT))
    with pytest.raises(RemoteExecutorError, match=r"http://fake:8000 does not serve model 'gpt-9'.*fake-model"):
        RemoteExecutor("http://fake:8000", model="gpt-9", tokenizer=server.tokenizer, **server.transports())


def test_unreachable_server_is_named_in_the_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(RemoteExecutorError, match=f"cannot reach the server at http://127.0.0.1:{port}"):
        ParallelBranchDecoder.from_server(f"http://127.0.0.1:{port}", timeout=5)


def test_a_failing_branch_request_fails_the_answer_never_a_partial_one():
    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    server.fail_after = 2  # the third branch request fails while the others stream
    events = remote_decoder(server).stream(RawPrompt("Q\n"), branches=FRUIT)
    seen = []
    with pytest.raises(RemoteExecutorError, match="http://fake:8000 answered HTTP 500: engine died"):
        for event in events:
            seen.append(event)
    assert not any(isinstance(e, FinalEvent) for e in seen)


def test_server_side_context_error_is_reported_with_its_message():
    server = FakeServer(rules(*SCRIPT))
    server.status, server.error_body = 400, {"error": {"message": "maximum context length is 2048 tokens"}}
    with pytest.raises(RemoteExecutorError, match="HTTP 400: maximum context length is 2048 tokens"):
        remote_decoder(server).generate(RawPrompt("Q\n"))


def test_grammar_constraints_go_to_the_servers_guided_decoding():
    def constraint():  # a local constraint factory that also says what grammar it enforces
        raise AssertionError("the remote executor never runs a local constraint")

    constraint.grammar = 'start: "yes" | "no"'
    body = completion_body("m", [1, 2], max_tokens=5, stop=[], options=DecodeOptions(), grammar=constraint.grammar,
                           server="vllm")
    assert body["structured_outputs"] == {"grammar": 'start: "yes" | "no"'} and body["prompt"] == [1, 2]
    assert completion_body("m", [1], max_tokens=5, stop=[], options=DecodeOptions(), grammar="g",
                           server="sglang")["ebnf"] == "g"


def test_stream_lines_carry_token_ids_finish_and_usage():
    chunk = parse_sse_line('data: {"choices": [{"text": "a", "token_ids": [5, 7], "finish_reason": null}]}')
    assert chunk.token_ids == [5, 7] and chunk.finish is None
    chunk = parse_sse_line('data: {"choices": [{"text": "ab", "logprobs": {"tokens": ["token_id:5", "token_id:7"]},'
                           ' "finish_reason": "stop", "stop_reason": "####"}]}')
    assert chunk.token_ids == [5, 7] and chunk.text == "ab" and chunk.finish == "stop" and chunk.stop_reason == "####"
    assert parse_sse_line("data: [DONE]") is None and parse_sse_line("") is None


def test_stats_carry_the_servers_own_usage():
    server = FakeServer(rules(*SCRIPT, leak_guard=FRUIT))
    result = remote_decoder(server).generate(RawPrompt("Q\n"), branches=FRUIT)
    usage = result.stats.server_usage
    assert usage["requests"] >= 1 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert result.stats.as_dict()["server_usage"] == usage
