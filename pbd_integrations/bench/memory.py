"""Memory measurements: KV-cache bytes per token, and peak resident memory during a run."""

from __future__ import annotations

import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def kv_bytes_per_token(model) -> int:
    """Bytes one token takes in the KV cache: 2 (K and V) x layers x kv heads x head dim x element size."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_attention_heads")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    element = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * element


def rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class PeakRSS:
    """Sample resident memory every ``interval`` seconds in a thread while the block runs.

    ``peak`` is the highest sample, ``start`` the value on entry; torch ops
    release the GIL, so sampling goes on during forward passes.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class ForwardTimer:
    """Time spent inside ``model.forward`` while the block runs (the rest is the decoding loop's own cost).

    Wraps the instance's ``forward`` and restores it on exit; ``seconds`` and
    ``calls`` add up every forward pass made in the block.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> "ForwardTimer":
        inner = self.model.forward

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        self.model.forward = timed
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward  # back to the class's method
