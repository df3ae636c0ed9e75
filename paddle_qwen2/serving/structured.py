"""Structured output on `POST /v1/chat/completions`: the request's `response_format` as a `GuidedSpec`.

    spec = response_format_spec(body)     # None for no response_format or {"type": "text"}; APIError(400) if bad

`{"type": "json_object"}` constrains the answer to a JSON object, `{"type": "json_schema", "json_schema": {"name",
"schema", "strict"?, "description"?}}` to a JSON value valid for `schema` (whether `strict` is set or not: the
schema is always enforced). A malformed `response_format` and a schema feature the grammar engine cannot enforce
are a 400 whose `param` names the field (`response_format.json_schema.schema` for the schema), built here in the
HTTP process before anything is queued. A JSON `response_format` with `tools` is a 400 unless `tool_choice` is
"none": a forced tool call and a forced JSON answer cannot both hold, and with "auto" the model could not call a tool.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..inference.guided import GuidedDecodingError, GuidedSpec
from .protocol import APIError

__all__ = ["response_format_spec"]

FORMAT_TYPES = ("text", "json_object", "json_schema")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JSON_SCHEMA_KEYS = {"name", "schema", "strict", "description"}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def response_format_spec(body: Any) -> GuidedSpec | None:
    """The `GuidedSpec` of `body.response_format` (None when absent or "text"); APIError(400) naming the field."""
    fmt = getattr(body, "response_format", None)
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("response_format", f"expected an object with a type, got {json.dumps(fmt)[:80]}")
    kind = fmt.get("type")
    if kind not in FORMAT_TYPES:
        raise _bad("response_format.type", f"expected one of {', '.join(FORMAT_TYPES)}, got {json.dumps(kind)[:80]}")
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    extra = sorted(set(fmt) - allowed)
    if extra:
        raise _bad(f"response_format.{extra[0]}", f"unknown field for type {kind!r}")
    if kind == "text":
        return None
    _check_tools(body)
    if kind == "json_object":
        return GuidedSpec.json_object("response_format")
    return _json_schema_spec(fmt.get("json_schema"))


def _json_schema_spec(value: Any) -> GuidedSpec:
    param = "response_format.json_schema"
    if not isinstance(value, dict):
        raise _bad(param, f"expected an object with name and schema, got {json.dumps(value)[:80]}")
    extra = sorted(set(value) - _JSON_SCHEMA_KEYS)
    if extra:
        raise _bad(f"{param}.{extra[0]}", f"unknown field (expected {', '.join(sorted(_JSON_SCHEMA_KEYS))})")
    name = value.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise _bad(f"{param}.name", f"expected 1 to 64 of a-z, A-Z, 0-9, _ and -, got {json.dumps(name)[:80]}")
    if value.get("strict") is not None and not isinstance(value["strict"], bool):
        raise _bad(f"{param}.strict", f"expected a boolean, got {json.dumps(value['strict'])[:80]}")
    if value.get("description") is not None and not isinstance(value["description"], str):
        raise _bad(f"{param}.description", f"expected a string, got {json.dumps(value['description'])[:80]}")
    if "schema" not in value:
        raise _bad(f"{param}.schema", "field required (the JSON schema the answer must follow)")
    try:
        return GuidedSpec.json_schema(value["schema"], f"{param}.schema")
    except GuidedDecodingError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None


def _check_tools(body: Any) -> None:
    """400 for a JSON response_format with tools the model may call (tool_choice other than "none")."""
    tools = getattr(body, "tools", None)
    choice = getattr(body, "tool_choice", None)
    if tools and choice != "none":
        raise _bad(
            "response_format",
            "a JSON response_format cannot be combined with tools unless tool_choice is 'none' (a forced tool call "
            "and a forced JSON answer cannot both hold; with 'auto' the model could not call a tool)",
        )
