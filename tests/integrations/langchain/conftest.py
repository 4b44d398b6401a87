"""Fixtures: a scripted fake decoder (no weights) and the real default model (loaded once)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from lc_fakes import FakeDecoder  # noqa: E402


@pytest.fixture
def fake_decoder() -> FakeDecoder:
    return FakeDecoder()


@pytest.fixture(scope="session")
def default_decoder():
    """The real default model (SmolLM2-135M-Instruct), loaded once and shared through the registry."""
    from pbd_integrations.registry import get_decoder

    return get_decoder("default")
