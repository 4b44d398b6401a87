"""The real vLLM server answers the OpenAI-compatible calls the remote executor relies on."""
import httpx
import pytest

pytestmark = pytest.mark.server


def test_models_lists_exactly_one_model(vllm_server_url):
    response = httpx.get(f"{vllm_server_url}/v1/models", timeout=30)
    response.raise_for_status()
    models = response.json()["data"]
    assert len(models) == 1
    assert models[0]["id"] and models[0]["max_model_len"] > 0


def test_greedy_completion_of_a_token_id_prompt(vllm_server_url):
    ids = httpx.post(f"{vllm_server_url}/tokenize", json={"prompt": "The capital of France is"}, timeout=30).json()["tokens"]
    body = {"prompt": ids, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    first, second = (httpx.post(f"{vllm_server_url}/v1/completions", json=body, timeout=120) for _ in range(2))
    first.raise_for_status()
    choice, usage = first.json()["choices"][0], first.json()["usage"]
    assert usage["prompt_tokens"] == len(ids) and usage["completion_tokens"] == 8
    assert len(choice["token_ids"]) == 8 and choice["text"] and choice["finish_reason"] == "length"
    assert second.json()["choices"][0]["token_ids"] == choice["token_ids"]  # greedy is repeatable
