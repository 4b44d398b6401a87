"""LangChain's standard suites (langchain-tests 1.1.9) on the real default model.

Unit tests never load weights (construction is lazy) and run with sockets
disabled; integration tests decode with SmolLM2-135M-Instruct on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pytest_socket import disable_socket, enable_socket

from pbd_integrations import ChatParallelBranch

# Small budgets keep the suite fast on 2 CPU cores; every standard test still
# decodes for real. Tool calls and JSON answers are grammar-constrained, so
# they are complete well within these budgets.
_PARAMS = {"model": "default", "max_tokens": 40, "max_branch_tokens": 24}


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
