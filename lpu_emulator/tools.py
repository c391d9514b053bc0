"""Tool calls: the emulator answers with one when ``tool_choice`` requires one.

OpenAI's rule, as the emulator applies it to a chat request:

* ``tool_choice`` absent, ``"auto"`` or ``"none"``: a text answer, as without tools (a real
  model may choose to call a tool under ``"auto"``; the emulator never does);
* ``"required"``: a call of one of the request's function tools (the choice is
  deterministic: it depends only on the prompt and ``seed``, like the text);
* ``{"type": "function", "function": {"name": N}}``: a call of ``N``, which must be among
  ``tools``.

Anything else that would need a tool call is refused with a 400 naming the parameter:
``"required"`` without function tools, a named function that is not in ``tools``, or a
``tool_choice`` the emulator cannot honour (``allowed_tools``, custom tools). The answer is
one call (``parallel_tool_calls`` is accepted and ignored): ``finish_reason`` is
``"tool_calls"``, its ``arguments`` a JSON object generated from the function's
``parameters`` schema (required properties, or all when none are listed; values of the
declared type, ``enum``/``const`` honoured). The arguments text is cut into pieces of
:data:`FRAGMENT_CHARS` characters, one emulated token each, so the schedule (and the stream's
chunks) has one token per piece; if the allowance is smaller the arguments are cut there
and ``finish_reason`` is ``"length"``, as OpenAI does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from lpu_emulator.text import VOCABULARY, request_key
from lpu_protocol.openai_api import APIError, CompletionRequest

__all__ = ["FRAGMENT_CHARS", "ToolCall", "tool_call_for"]

FRAGMENT_CHARS = 4
"""Characters of arguments text per emulated token (about a BPE token of JSON)."""
_MAX_DEPTH = 4
"""Nesting of generated arguments beyond which an object or array is left empty."""
_WORDS = tuple(w.strip() for w in VOCABULARY if w.strip().isalpha())


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call of a response: ``fragments`` joined is the ``arguments`` text
    delivered (all of it, or the part the allowance left, see :meth:`within`)."""

    id: str
    name: str
    fragments: tuple[str, ...]
    complete: bool = True

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)

    @property
    def finish_reason(self) -> Literal["tool_calls", "length"]:
        return "tool_calls" if self.complete else "length"

    def within(self, allowance: int) -> ToolCall:
        """This call as delivered with at most ``allowance`` tokens (>= 1)."""
        if len(self.fragments) <= allowance:
            return self
        return replace(self, fragments=self.fragments[:allowance], complete=False)


def _invalid(message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param="tool_choice", code=code)


def _functions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The request's function tools by name (other tool types are left out)."""
    out: dict[str, Mapping[str, Any]] = {}
    for tool in body.get("tools") or ():
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str) and fn["name"]:
            out[fn["name"]] = fn
    return out


def _wanted(body: Mapping[str, Any], functions: Mapping[str, Any]) -> str | None:
    """The function the request requires a call of: a name, ``""`` for any, None for none."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if not functions:
            raise _invalid("Invalid 'tool_choice': 'required' needs at least one function in"
                           " 'tools'.")
        return ""
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _invalid("Invalid 'tool_choice': a function choice needs 'function.name'.")
        if name not in functions:
            raise _invalid(f"Invalid 'tool_choice': function {name[:64]!r} is not in 'tools'.")
        return name
    if isinstance(choice, Mapping):
        kind = str(choice.get("type"))[:32]
        raise _invalid(f"The emulator cannot honour a 'tool_choice' of type {kind!r}; use"
                       " 'none', 'auto', 'required' or a function.", "unsupported_value")
    raise _invalid("Invalid 'tool_choice': expected 'none', 'auto', 'required' or"
                   " {'type': 'function', 'function': {'name': ...}}.")


def _value(schema: Any, rng: np.random.Generator, depth: int) -> Any:
    """A value that fits ``schema`` (a JSON-schema subset), drawn from ``rng``."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[int(rng.integers(len(enum)))]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value(options[0], rng, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, rng, depth + 1)
    if kind == "array":
        if depth >= _MAX_DEPTH:
            return []
        lo = schema.get("minItems", 1)
        count = max(1, min(lo if isinstance(lo, int) else 1, 3))
        return [_value(schema.get("items"), rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 100)
        lo, hi = (int(lo), int(hi)) if isinstance(lo, int | float) and isinstance(
            hi, int | float) and lo <= hi else (0, 100)
        return int(rng.integers(lo, hi + 1))
    if kind == "number":
        return round(float(rng.uniform(0, 100)), 2)
    if kind == "boolean":
        return bool(rng.integers(2))
    if kind == "null":
        return None
    return " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=2))


def _object(schema: Mapping[str, Any], rng: np.random.Generator, depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    if depth > _MAX_DEPTH or not isinstance(props, Mapping):
        return {}
    required = schema.get("required")
    names = [n for n in required if n in props] if isinstance(required, list) else list(props)
    return {str(n): _value(props[n], rng, depth) for n in names}


def tool_call_for(req: CompletionRequest) -> ToolCall | None:
    """The call ``req`` requires (module doc), None when it is answered with text.

    Raises :class:`APIError` (400, ``param`` ``tool_choice``) for a ``tool_choice`` the
    emulator cannot honour. Deterministic: the same prompt and seed give the same call.
    """
    if req.kind != "chat":
        return None
    functions = _functions(req.body)
    wanted = _wanted(req.body, functions)
    if wanted is None:
        return None
    key = request_key(req)
    rng = np.random.default_rng([int.from_bytes(key[:8], "little"), 7])
    name = wanted or list(functions)[int(rng.integers(len(functions)))]
    params = functions[name].get("parameters")
    args = _object(params, rng, 0) if isinstance(params, Mapping) else {}
    text = json.dumps(args, separators=(",", ":"))  # ASCII: a lone surrogate stays escaped
    pieces = tuple(text[i:i + FRAGMENT_CHARS] for i in range(0, len(text), FRAGMENT_CHARS))
    return ToolCall(id="call_" + key[:12].hex(), name=name, fragments=pieces)
