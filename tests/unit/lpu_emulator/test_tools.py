"""The tool call a request requires: which function, arguments fitting its schema, cut to
the allowance; deterministic for the same prompt and seed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lpu_emulator.tools import FRAGMENT_CHARS, tool_call_for
from lpu_protocol.openai_api import APIError, parse_request


def _req(params: Any, choice: Any = "required", seed: int | None = 1) -> Any:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                            "tools": [{"type": "function",
                                       "function": {"name": "f", "parameters": params}}],
                            "tool_choice": choice}
    if seed is not None:
        body["seed"] = seed
    return parse_request(json.dumps(body).encode(), "chat")


@pytest.mark.parametrize(("params", "check"), [
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 3}}},
     lambda v: v == {"a": 3}),
    ({"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"const": 7}}},
     lambda v: v["a"] in ("x", "y") and v["b"] == 7),
    ({"type": "object", "required": ["b"], "properties": {"a": {"type": "string"},
                                                          "b": {"type": "boolean"}}},
     lambda v: set(v) == {"b"} and isinstance(v["b"], bool)),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "number"},
                                             "minItems": 2}}},
     lambda v: len(v["a"]) == 2 and all(isinstance(x, float) for x in v["a"])),
    ({"type": "object", "properties": {"a": {"type": ["null", "string"]},
                                       "o": {"type": "object", "properties": {
                                           "n": {"type": "null"}}}}},
     lambda v: isinstance(v["a"], str) and v["o"] == {"n": None}),
    (None, lambda v: v == {}),
], ids=["integer-bounds", "enum-const", "required-only", "array", "nullable-nested",
        "no-schema"])
def test_arguments_fit_the_schema(params: Any, check: Any) -> None:
    call = tool_call_for(_req(params))
    assert call is not None and call.name == "f" and call.finish_reason == "tool_calls"
    assert check(json.loads(call.arguments))
    assert all(1 <= len(f) <= FRAGMENT_CHARS for f in call.fragments)


def test_same_prompt_and_seed_same_call() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert tool_call_for(_req(schema)) == tool_call_for(_req(schema))


@pytest.mark.parametrize("choice", [None, "auto", "none"], ids=["absent", "auto", "none"])
def test_text_unless_required(choice: Any) -> None:
    assert tool_call_for(_req(None, choice)) is None


def test_within_cuts_to_the_allowance() -> None:
    call = tool_call_for(_req({"type": "object", "properties": {"a": {"type": "string"}}}))
    assert call is not None and len(call.fragments) > 2
    cut = call.within(2)
    assert cut.fragments == call.fragments[:2] and cut.finish_reason == "length"
    assert call.within(len(call.fragments)) is call


def test_refusal_names_the_parameter() -> None:
    with pytest.raises(APIError) as exc:
        tool_call_for(_req(None, {"type": "function", "function": {"name": "g"}}))
    assert exc.value.status == 400 and exc.value.param == "tool_choice"
