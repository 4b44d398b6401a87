"""Caller titles with ':' (and other delimiters) pass through the adapters and the CLI unchanged.

The engine renders a title in the branch text (`pbd_core.plan_format.render_title`);
everything an adapter shows about a branch (metadata, branch events, the CLI's
branch lines) keeps the caller's own text. Validation is the engine's alone.
"""

from __future__ import annotations

import json

import pytest
from scripted_model import ScriptedLM, rules

from pbd_core import ParallelBranchDecoder
from pbd_core.plan_format import render_title, seed_text

TITLES = ["Step 1: gather data", "Step 2: clean it"]
RENDERED = [render_title(t) for t in TITLES]  # "Step 1： gather data", ...
BODIES = [" got it.", " clean."]


def scripted_decoder() -> ParallelBranchDecoder:
    """Writes a body only after the rendered header; writes LEAK if a branch could see its sibling."""
    script = rules((seed_text(TITLES[0]), BODIES[0]), (seed_text(TITLES[1]), BODIES[1]), leak_guard=RENDERED)
    model = ScriptedLM(script)
    return ParallelBranchDecoder(model, model.tokenizer)


def test_langchain_metadata_and_branch_events_keep_the_callers_titles():
    pytest.importorskip("langchain_core")
    from langchain_core.callbacks import BaseCallbackHandler

    from pbd_integrations import ChatParallelBranch
    from pbd_integrations.langchain.chat_models import BRANCH_END_EVENT, BRANCH_START_EVENT, BRANCH_TOKEN_EVENT

    class Custom(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, dict]] = []

        def on_custom_event(self, name, data, **kwargs) -> None:
            self.events.append((name, data))

    handler = Custom()
    llm = ChatParallelBranch(model=scripted_decoder(), max_tokens=60, max_branch_tokens=20)
    message = llm.invoke("Q", branches=TITLES, config={"callbacks": [handler]})
    assert [b["title"] for b in message.response_metadata["branches"]] == TITLES
    assert f"####{RENDERED[0]}:{BODIES[0]}\n####{RENDERED[1]}:{BODIES[1]}\n" in message.response_metadata["raw_text"]
    assert message.content.startswith(f"**{TITLES[0]}**\n\n{BODIES[0].strip()}\n\n**{TITLES[1]}**")
    starts = [d["title"] for n, d in handler.events if n == BRANCH_START_EVENT]
    ends = {d["title"]: d["text"] for n, d in handler.events if n == BRANCH_END_EVENT}
    tokens = {d["title"] for n, d in handler.events if n == BRANCH_TOKEN_EVENT}
    assert starts == TITLES and tokens == set(TITLES) and ends == dict(zip(TITLES, BODIES))


def test_llama_index_raw_branches_keep_the_callers_titles():
    pytest.importorskip("llama_index.core")
    from pbd_integrations.llama_index import ParallelBranchLLM

    llm = ParallelBranchLLM(model=scripted_decoder(), max_tokens=60, max_branch_tokens=20, branches=TITLES)
    response = llm.complete("Q")
    assert [(b["title"], b["text"]) for b in response.raw["branches"]] == list(zip(TITLES, BODIES))
    assert f"####{RENDERED[0]}:{BODIES[0]}" in response.raw["raw_text"]
    assert f"**{TITLES[0]}**\n\n{BODIES[0].strip()}" in response.text  # the reader sees the caller's title
    per_call = llm.complete("Q", branches=["Only: this"])  # a per-call title with ':' validates too
    assert [b["title"] for b in per_call.raw["branches"]] == ["Only: this"]


def test_server_reports_the_callers_titles():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pbd_integrations.server import create_app

    client = TestClient(create_app(scripted_decoder()))
    request = {"messages": [{"role": "user", "content": "Q"}], "branches": TITLES, "max_tokens": 60}
    body = client.post("/v1/chat/completions", json=request).json()
    assert [b["title"] for b in body["pbd"]["branches"]] == TITLES
    bad = client.post("/v1/chat/completions", json={**request, "branches": ["ok: fine", "  "]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "branches"
    assert "branch title 1 is only whitespace" in bad.json()["error"]["message"]


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from pbd_integrations import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: scripted_decoder())
    argv = ["run", "Q", "--no-progress", "--max-new-tokens", "60", "--max-branch-tokens", "20"]
    for title in TITLES:
        argv += ["--branch", title]
    code = cli.main(argv + list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_keeps_the_callers_titles(monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [(b["title"], b["text"]) for b in doc["branches"]] == list(zip(TITLES, BODIES))
    assert doc["text"].startswith(f"**{TITLES[0]}**") and "####" not in doc["text"]
    assert doc["raw_text"].startswith(f"####{RENDERED[0]}:")


def test_cli_text_shows_each_title_once_with_its_body(monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys)
    assert code == 0, err
    # The caller's title, then the body without the rendered ``####...:`` header the engine streamed first.
    assert f"[0] {TITLES[0]}:{BODIES[0]}\n" in out and f"[1] {TITLES[1]}:{BODIES[1]}\n" in out
    assert "####" not in out  # no close marker after the branches
    _, raw, _ = _cli(monkeypatch, capsys, "--raw")
    assert "####%%%%" in raw


def test_cli_refuses_only_a_title_with_nothing_to_write(monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "--branch", "   ")
    assert code == 2 and "pbd: error: branch title 2 is only whitespace" in err
