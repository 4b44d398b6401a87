"""One decoder per model source per process, loaded on first use.

Adapters hold a model *name*, not weights: building a `ChatParallelBranch` or
a `ParallelBranchLLM` is instant, and every instance that names the same
source shares one `ParallelBranchDecoder` (one copy of the weights). The
first call to `get_decoder` for a source loads it; concurrent first calls
wait for that one load instead of loading twice.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbd_core import ParallelBranchDecoder

_lock = threading.Lock()
_decoders: dict[tuple[str, str, str], "ParallelBranchDecoder"] = {}


def get_decoder(
    model: "str | ParallelBranchDecoder" = "default",
    *,
    dtype: Any = "auto",
    device: Any = "auto",
    backend: str = "torch",
) -> "ParallelBranchDecoder":
    """Return the shared decoder for ``model``, loading it on the first call.

    Args:
        model: ``"default"`` (SmolLM2-135M-Instruct, offline), ``"qwen2.5-coder-0.5b"``,
            a local transformers folder, a ``.gguf`` path, or an already built
            `ParallelBranchDecoder` (returned as is).
        dtype: Passed to `ParallelBranchDecoder.from_pretrained` (``"auto"`` picks bf16 where the CPU supports it).
        device: Passed to `ParallelBranchDecoder.from_pretrained`.
        backend: ``"torch"`` (transformers, in process) or ``"llama.cpp"`` (the model's GGUF on llama.cpp).
    """
    if not isinstance(model, str):
        return model
    key = (model, str(dtype), str(device)) if backend == "torch" else (model, backend, "cpu")
    decoder = _decoders.get(key)
    if decoder is not None:
        return decoder
    with _lock:
        decoder = _decoders.get(key)
        if decoder is None:
            from pbd_core import ParallelBranchDecoder

            extra = {} if backend == "torch" else {"backend": backend}
            decoder = ParallelBranchDecoder.from_pretrained(model, dtype=dtype, device=device, **extra)
            _decoders[key] = decoder
    return decoder


_remote: dict[tuple[str, str | None, str | None, float], "ParallelBranchDecoder"] = {}


def get_remote_decoder(
    base_url: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 600.0
) -> "ParallelBranchDecoder":
    """Return the shared decoder for a model on a vLLM/SGLang server (connects on the first call)."""
    key = (base_url, model, api_key, float(timeout))
    with _lock:
        decoder = _remote.get(key)
        if decoder is None:
            from pbd_core import ParallelBranchDecoder

            decoder = ParallelBranchDecoder.from_server(base_url, model=model, api_key=api_key, timeout=timeout)
            _remote[key] = decoder
    return decoder


def loaded_sources() -> list[tuple[str, str, str]]:
    """The ``(source, dtype, device)`` keys loaded so far in this process."""
    with _lock:
        return list(_decoders)


def clear() -> None:
    """Forget every loaded decoder (their memory is freed once no adapter holds them)."""
    with _lock:
        _decoders.clear()
        _remote.clear()
