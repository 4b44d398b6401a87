"""LangChain's standard integration suite on `ChatParallelBranch(base_url=...)` against the real vLLM server."""

from __future__ import annotations

import os

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from pbd_integrations import ChatParallelBranch

pytestmark = pytest.mark.server


class TestRemoteChatParallelBranch(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, vllm_server_url: str) -> None:
        os.environ["PBD_TEST_SERVER_URL"] = vllm_server_url  # read by chat_model_params

    @property
    def chat_model_class(self) -> type[ChatParallelBranch]:
        return ChatParallelBranch

    @property
    def chat_model_params(self) -> dict:
        return {"base_url": os.environ["PBD_TEST_SERVER_URL"] + "/v1", "temperature": 0}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    _LOOP = (
        "model capability, measured: at greedy default settings SmolLM2-135M writes `punchline` first and loops "
        "inside it ('The cat was a cat, and the cat was a cat, ...') until max_tokens; the server's grammar keeps "
        "the JSON valid but cannot end the loop (the in-process loop guard is part of the local constraint), so "
        "the required `setup` never comes"
    )

    # The suite only allows an override that is marked xfail as a whole: typeddict and json_schema pass (XPASS).
    @pytest.mark.xfail(reason=_LOOP + " (pydantic schema; the others pass)", strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: BaseChatModel, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_LOOP + " (pydantic schema; the others pass)", strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_LOOP, strict=False)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason="model capability: with tool_choice='auto' SmolLM2-135M answers in prose instead of calling the tool",
        strict=False,
    )
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
