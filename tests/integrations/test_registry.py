"""One decoder per source per process, loaded lazily and only once."""

from __future__ import annotations

import threading
import time

import pytest

from pbd_core import ParallelBranchDecoder
from pbd_integrations import registry


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace loading with a slow fake that records each load."""
    loads: list[tuple] = []

    def from_pretrained(source, *, dtype="auto", device="auto"):
        loads.append((source, dtype, device))
        time.sleep(0.05)  # long enough for concurrent callers to overlap
        return object()

    monkeypatch.setattr(ParallelBranchDecoder, "from_pretrained", staticmethod(from_pretrained))
    saved = dict(registry._decoders)
    registry.clear()
    yield loads
    registry.clear()
    registry._decoders.update(saved)


def test_same_source_loads_once_and_is_shared(fake_loads: list) -> None:
    first = registry.get_decoder("a")
    assert registry.get_decoder("a") is first
    assert registry.get_decoder("b") is not first
    assert registry.get_decoder("a", dtype="float32") is not first
    assert fake_loads == [("a", "auto", "auto"), ("b", "auto", "auto"), ("a", "float32", "auto")]


def test_concurrent_first_calls_load_once(fake_loads: list) -> None:
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(registry.get_decoder("x"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_loads) == 1
    assert all(r is results[0] for r in results)


def test_a_built_decoder_is_returned_as_is(fake_loads: list) -> None:
    built = object()
    assert registry.get_decoder(built) is built
    assert fake_loads == []
