"""LangChain's standard suites (langchain-tests 1.1.9) on the real default model.

Unit tests never load weights (construction is lazy) and run with sockets
disabled; integration tests decode with SmolLM2-135M-Instruct on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pytest_socket import disable_socket, enable_socket

from pbd_integrations import ChatParallelBranch

# The suite's own default budget (100 tokens). SmolLM2-135M loops inside JSON
# strings under greedy decoding ('{"punchline": "The cat was a cat, and it was a
# cat, and it was a cat, ...') until the budget is gone, leaving the JSON
# unfinished; a mild repetition penalty (an ordinary ChatParallelBranch field)
# lets it close its strings. Grammars keep every call and JSON answer valid.
_PARAMS = {"model": "default", "max_tokens": 100, "max_branch_tokens": 32, "repetition_penalty": 1.3}


class TestChatParallelBranchUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _no_network(self) -> Iterator[None]:
        disable_socket(allow_unix_socket=True)
        yield
        enable_socket()

    @property
    def chat_model_class(self) -> type[ChatParallelBranch]:
        return ChatParallelBranch

    @property
    def chat_model_params(self) -> dict:
        # test_standard_params passes max_tokens itself.
        return {"model": "default"}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatParallelBranchIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatParallelBranch]:
        return ChatParallelBranch

    @property
    def chat_model_params(self) -> dict:
        return dict(_PARAMS)

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

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason=(
            "model capability: with tool_choice='auto' SmolLM2-135M answers in prose instead of "
            "calling get_weather. The adapter side passes: the same tool is called correctly when "
            "the call is required (test_tool_calling, test_tool_choice), and the auto grammar "
            "admits either a call or text (tests/integrations/test_grammar.py)."
        ),
        strict=False,
    )
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
