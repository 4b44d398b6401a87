"""`pbd serve`: an OpenAI-compatible HTTP server on the local engine.

    pbd serve --model default --host 127.0.0.1 --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

`create_app(decoder)` builds the FastAPI app (`pbd_integrations.server.app`);
`pbd_integrations.server.protocol` holds the wire format as pure functions.
Needs the ``serve`` extra (FastAPI, uvicorn); importing this package does not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(decoder: Any, *, model_name: str | None = None) -> Any:
    """The FastAPI app serving ``decoder``; see `pbd_integrations.server.app.create_app`."""
    from .app import create_app as build

    return build(decoder, model_name=model_name)
