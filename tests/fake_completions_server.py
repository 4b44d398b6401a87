"""A scripted OpenAI-compatible completions server, in process, for the remote executor's protocol tests.

It speaks the subset of vLLM's API the remote executor uses (``/v1/models``,
streamed ``/v1/completions`` with token-id prompts, ``return_token_ids``,
``include_stop_str_in_output``) through `httpx.MockTransport`, and writes text
with the same `rules` scripts as `ScriptedLM`, so one script can be decoded
locally and "remotely" and the results compared. It records every request.
Real-server behaviour is tested against a real vLLM in ``tests/server``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

from scripted_model import Script
from tiny_models import byte_tokenizer


@dataclass
class FakeServer:
    script: Script
    model: str = "fake-model"
    max_model_len: int = 4096
    tokenizer: object = field(default_factory=byte_tokenizer)
    requests: list[dict] = field(default_factory=list)
    fail_after: int | None = None  # answer HTTP 500 to every completion after this many
    status: int = 200
    error_body: dict | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": self.model, "object": "model", "max_model_len": self.max_model_len}]})
        if request.url.path == "/tokenize":
            body = json.loads(request.content)
            return httpx.Response(200, json={"tokens": self.tokenizer(body["prompt"])["input_ids"]})
        if request.url.path == "/detokenize":
            body = json.loads(request.content)
            return httpx.Response(200, json={"prompt": self.tokenizer.decode(body["tokens"])})
        if request.url.path == "/get_server_info":
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path != "/v1/completions":
            return httpx.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        self.requests.append(body)
        if body["model"] != self.model:
            return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist."}})
        if self.status != 200:
            return httpx.Response(self.status, json=self.error_body or {"error": {"message": "failed"}})
        if self.fail_after is not None and len(self.requests) > self.fail_after:
            return httpx.Response(500, json={"error": {"message": "engine died"}})
        if len(body["prompt"]) + body["max_tokens"] > self.max_model_len:
            return httpx.Response(400, json={"error": {"message": "This model's maximum context length is "
                                                         f"{self.max_model_len} tokens."}})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._stream(body))

    def _stream(self, body: dict) -> bytes:
        text = self.tokenizer.decode(body["prompt"])
        written, finish, stop_reason, lines = "", "length", None, []
        for _ in range(body["max_tokens"]):
            nxt = self.script(text + written)
            if not nxt:
                finish = "stop"
                break
            token = self.tokenizer(nxt[0])["input_ids"][0]
            written += nxt[0]
            lines.append(self._chunk(nxt[0], token, None, None))
            hit = next((s for s in body.get("stop") or [] if written.endswith(s)), None)
            if hit is not None:
                finish, stop_reason = "stop", hit
                break
        lines.append(self._chunk("", None, finish, stop_reason))
        lines.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                               "completion_tokens": len(written)}})
        return b"".join(f"data: {json.dumps(line)}\n\n".encode() for line in lines) + b"data: [DONE]\n\n"

    @staticmethod
    def _chunk(text: str, token: int | None, finish: str | None, stop_reason) -> dict:
        tokens = [token] if token is not None else []
        return {"choices": [{"index": 0, "text": text, "token_ids": tokens,
                             "finish_reason": finish, "stop_reason": stop_reason}]}

    def transports(self) -> dict:
        transport = httpx.MockTransport(self.handler)
        return {"transport": transport, "async_transport": transport}
