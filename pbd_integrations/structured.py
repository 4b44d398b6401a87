"""Structured answers: a ``response_format`` request read once for both adapters.

The LangChain chat model (``with_structured_output``) and the LlamaIndex LLM
(``structured_predict``, ``as_structured_llm``) ask for JSON the same way:
the schema is described in the system text (`pbd_integrations.chat.json_instructions`)
and the answer is decoded under the schema's grammar, so it always parses,
even when the budget cuts it (`pbd_integrations.json_completion`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from .grammar import json_schema_constraint


def response_schema(response_format: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None, dict[str, Any] | None]:
    """``(wants_json, grammar schema, schema to describe in the prompt)`` from a ``response_format``.

    Accepts ours (``{"type": "json_schema", "schema": ...}``), OpenAI's
    (``{"type": "json_schema", "json_schema": {"schema": ...}}``) and JSON mode
    (``{"type": "json_object"}``: any JSON object; with a ``schema``, that schema).
    """
    if not response_format:
        return False, None, None
    if not isinstance(response_format, dict):
        msg = f"response_format must be a dict such as {{'type': 'json_schema', 'schema': {{...}}}}, got {response_format!r}"
        raise ValueError(msg)
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")
        return True, schema, schema
    if kind == "json_schema":
        schema = response_format.get("schema") or (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            msg = f"response_format of type json_schema needs a 'schema' dict, got {response_format!r}"
            raise ValueError(msg)
        return True, schema, schema
    msg = f"response_format type must be 'json_object' or 'json_schema', got {kind!r}"
    raise ValueError(msg)


@functools.lru_cache(maxsize=64)
def cached_json_constraint(tokenizer: Any, schema_json: str) -> Callable[[], Any]:
    """The grammar factory for one schema (given as JSON text), compiled once per tokenizer (up to a second)."""
    return json_schema_constraint(tokenizer, json.loads(schema_json))
