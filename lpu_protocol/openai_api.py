"""OpenAI request shapes and error bodies, shared by the router and the emulator.

One parser for ``/v1/chat/completions`` and ``/v1/completions`` bodies: it
validates the fields the serving path depends on (model, messages or prompt,
output allowance, streaming) and refuses what a deterministic backend cannot
honour, raising :class:`APIError` with OpenAI's error shape::

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "max_tokens", "code": "invalid_value"}}

The body is read by :func:`lpu_protocol.json_body.parse_body` (one JSON object, UTF-8, nested at
most 64 levels, no lone surrogates: the router and the emulator accept exactly the same text)
and kept with the byte spans of its top-level members (``CompletionRequest.wire``), so that a
proxy forwards the client's bytes with at most the allowance and the model name spliced in
(:func:`forward_body`), never re-serialised.

Parameters OpenAI does not define for the endpoint follow a
``ParamPolicy`` (refused, passed through, or passed through when on an
allow-list; by default vLLM's sampling extensions, which load tools send). Of those,
``ignore_eos`` and ``min_tokens`` are parsed (the emulator honours them) and ``top_k``,
``min_p``, ``repetition_penalty`` type-checked.

A user value quoted in an error message (a model name, a parameter name, a role) is cut to
:data:`ECHO_CHARS` characters, so an error body stays small whatever the client sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

from lpu_protocol.json_body import (
    MAX_DEPTH,
    BodyError,
    JSONBody,
    json_string,
    json_type_name,
    parse_body,
)
from lpu_protocol.param_policy import DEFAULT_PARAMS, ParamPolicy

__all__ = [
    "ALLOWANCE_PARAMS",
    "CHAT_ROLES",
    "ECHO_CHARS",
    "APIError",
    "CompletionRequest",
    "Message",
    "check_params",
    "context_length_error",
    "error_body",
    "forward_body",
    "json_object",
    "model_not_found",
    "parse_request",
]

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Accepted and either honoured or harmless for a fixed-schedule backend.
_COMMON_PARAMS = frozenset(
    {
        "model", "max_tokens", "stream", "stream_options", "temperature", "top_p", "seed",
        "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user", "n",
        "service_tier", "metadata", "store",
    }
)
_CHAT_PARAMS = _COMMON_PARAMS | {
    "messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "logprobs", "top_logprobs", "reasoning_effort", "functions",
    "function_call", "modalities", "prediction", "audio", "web_search_options",
}
_COMPLETION_PARAMS = _COMMON_PARAMS | {"prompt", "echo", "best_of", "logprobs", "suffix"}

MAX_ALLOWANCE = 1_000_000  # far above any compiled shape; larger values are not an allowance
ALLOWANCE_PARAMS = ("max_completion_tokens", "max_tokens")
"""The output allowance's names, in the order of precedence."""
_SPLICED = frozenset({"model", *ALLOWANCE_PARAMS})
"""Members a proxy may rewrite: their byte spans are recorded at parse time."""

ECHO_CHARS = 256
"""Most characters of a user value quoted in an error message."""


class APIError(Exception):
    """An error returned to the client in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def to_json(self) -> bytes:
        return json.dumps(self.body()).encode()


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_object(raw: bytes) -> dict[str, Any]:
    """An admin call's body as a JSON object; raises :class:`APIError` (400 ``invalid_json``)
    for anything else (the router's and the emulator's admin endpoints both read one)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise APIError(400, "The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise APIError(400, "The body must be a JSON object.", code="invalid_json")
    return doc


def _echo(value: object) -> str:
    """``value`` as text for an error message, cut to :data:`ECHO_CHARS` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= ECHO_CHARS:
        return text
    return f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{_echo(model)}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def context_length_error(limit: int, prompt_tokens: int, completion_tokens: int) -> APIError:
    total = prompt_tokens + completion_tokens
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested"
        f" {total} tokens ({prompt_tokens} in the messages, {completion_tokens} in the"
        " completion). Please reduce the length of the messages or completion.",
        param="messages",
        code="context_length_exceeded",
    )


class Message(NamedTuple):
    role: str
    text: str
    """All text the chat template would render for this message (content parts,
    tool call arguments and names joined)."""


class CompletionRequest(NamedTuple):
    """A validated completion request, chat or legacy.

    A named tuple, not a frozen dataclass: one is built per request, and a frozen dataclass
    sets each of its 18 fields through ``object.__setattr__`` (1.9 us; the tuple: 0.4 us).
    """

    kind: Literal["chat", "completion"]
    model: str
    body: dict[str, Any]
    wire: JSONBody
    """The client's bytes and where ``model`` and the allowance are in them."""
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    prompt_token_ids: int = 0
    """Number of tokens given directly as token ids (legacy ``prompt`` as ints)."""
    extra_text: str = ""
    """Text outside messages that the template renders (tool definitions)."""
    max_tokens: int | None = None
    max_tokens_param: str | None = None
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None
    service_tier: str | None = None
    user: str | None = None
    ignore_eos: bool = False
    """vLLM's ``ignore_eos``: produce the whole allowance."""
    min_tokens: int = 0
    """vLLM's ``min_tokens``: produce at least this many tokens (up to the allowance)."""
    extra_params: tuple[str, ...] = ()
    """Top-level parameters OpenAI does not define for the endpoint (see :func:`check_params`)."""

    def __repr__(self) -> str:  # the body and its bytes may be megabytes: not shown
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields
                          if name not in ("body", "wire"))
        return f"CompletionRequest({shown})"


def _bad_type(param: str, expected: str, got: object) -> APIError:
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(got)} instead.",
        param=param,
        code="invalid_type",
    )


def _bad_value(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _int(key: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad_type(key, "an integer", v)
    return v


def _number(key: str, v: object, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad_type(key, "a number", v)
    # Compared as they are: an integer past float range is outside too (math.isfinite would
    # raise OverflowError on it), infinities fail the range, and the body reader refuses NaN.
    if not lo <= v <= hi:
        raise _bad_value(key, f"Invalid '{key}': {_echo(v)} is outside the range [{lo}, {hi}].")


def _content_text(content: object, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_type(param, "a string or an array of content parts", content)
    parts: list[str] = []
    for j, part in enumerate(content):
        ppath = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _bad_type(ppath, "an object", part)
        ptype = part.get("type")
        if ptype in ("text", "input_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad_type(f"{ppath}.text", "a string", text)
            parts.append(text)
        elif ptype == "refusal":
            refusal = part.get("refusal")
            parts.append(refusal if isinstance(refusal, str) else "")
        elif isinstance(ptype, str):
            raise _bad_value(
                f"{ppath}.type",
                f"Content part type '{_echo(ptype)}' is not supported: this deployment serves"
                " text-only compiled artifacts.",
            )
        else:
            raise APIError(
                400, f"Missing required parameter: '{ppath}.type'.", param=f"{ppath}.type",
                code="missing_required_parameter",
            )
    return "\n".join(parts)


def _messages(raw: object) -> tuple[Message, ...]:
    if raw is None:
        raise APIError(
            400, "Missing required parameter: 'messages'.", param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(raw, list):
        raise _bad_type("messages", "an array", raw)
    if not raw:
        raise _bad_value(
            "messages", "Invalid 'messages': empty array. Expected an array with minimum length 1."
        )
    out: list[Message] = []
    for i, m in enumerate(raw):
        # The common message, {"role": <a chat role>, "content": <text>}, is its own text;
        # any other shape is read (and refused) member by member.
        if m.__class__ is dict and len(m) == 2:
            role, content = m.get("role"), m.get("content")
            if role.__class__ is str and content.__class__ is str and role in CHAT_ROLES:
                out.append(Message(role, content))
                continue
        out.append(_message(m, f"messages[{i}]"))
    return tuple(out)


def _message(m: object, path: str) -> Message:
    if not isinstance(m, dict):
        raise _bad_type(path, "an object", m)
    role = m.get("role")
    if role is None:
        raise APIError(
            400, f"Missing required parameter: '{path}.role'.", param=f"{path}.role",
            code="missing_required_parameter",
        )
    if not isinstance(role, str):
        raise _bad_type(f"{path}.role", "a string", role)
    if role not in CHAT_ROLES:
        allowed = ", ".join(sorted(CHAT_ROLES))
        raise _bad_value(
            f"{path}.role",
            f"Invalid value: '{_echo(role)}'. Supported values are: {allowed}.",
        )
    if "content" not in m and role != "assistant":
        raise APIError(
            400, f"Missing required parameter: '{path}.content'.", param=f"{path}.content",
            code="missing_required_parameter",
        )
    text = _content_text(m.get("content"), f"{path}.content")
    extras: list[str] = [text]
    name = m.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise _bad_type(f"{path}.name", "a string", name)
        extras.append(name)
    tool_calls = m.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise _bad_type(f"{path}.tool_calls", "an array", tool_calls)
        extras.append(json.dumps(tool_calls, separators=(",", ":")))
    return Message(role, "\n".join(e for e in extras if e))


def _prompt(raw: object) -> tuple[str, int]:
    if raw is None:
        raise APIError(
            400, "Missing required parameter: 'prompt'.", param="prompt",
            code="missing_required_parameter",
        )
    if isinstance(raw, str):
        return raw, 0
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            if len(raw) != 1:
                raise _bad_value("prompt", "Only one prompt per request is supported (batch of 1).")
            return str(raw[0]), 0
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            return "", len(raw)
    raise _bad_type("prompt", "a string or an array of token ids", raw)


def parse_request(
    raw_body: bytes, kind: Literal["chat", "completion"], *,
    params: ParamPolicy | None = DEFAULT_PARAMS,
) -> CompletionRequest:
    """Parse and validate a request body.

    ``params`` decides parameters OpenAI does not define for the endpoint (400
    ``unknown_parameter`` for those it refuses); None leaves the decision to the caller
    (:func:`check_params`, e.g. once the router knows the bucket and its policy).
    """
    body, wire = _body(raw_body)
    chat = kind == "chat"
    known = _CHAT_PARAMS if chat else _COMPLETION_PARAMS
    extra_params = () if body.keys() <= known else tuple(k for k in body if k not in known)
    if params is not None and extra_params:
        _refuse_params(extra_params, params)
    model = body.get("model")
    if model is None:
        raise APIError(
            400, "Missing required parameter: 'model'.", param="model",
            code="missing_required_parameter",
        )
    if not isinstance(model, str):
        raise _bad_type("model", "a string", model)
    if not model:
        raise _bad_value("model", "Invalid 'model': empty string.")

    messages: tuple[Message, ...] = ()
    prompt = ""
    token_ids = 0
    if chat:
        messages = _messages(body.get("messages"))
    else:
        prompt, token_ids = _prompt(body.get("prompt"))
    opt = _options(body, _CHAT_CHECKS if chat else _CHECKS)
    if not opt:  # no optional member given: every field below has its default
        return CompletionRequest(kind, model, body, wire, messages, prompt, token_ids,
                                 extra_params=extra_params)
    allowance, param = _allowance(opt)
    # Positional: keywords cost twice as much here (0.8 us against 0.4), once per request.
    return CompletionRequest(
        kind, model, body, wire, messages, prompt, token_ids, opt.get("tools", ""),
        allowance, param, opt.get("stream", False), opt.get("stream_options", False),
        opt.get("seed"), opt.get("service_tier"), opt.get("user"),
        opt.get("ignore_eos", False), opt.get("min_tokens", 0), extra_params,
    )


def check_params(req: CompletionRequest, params: ParamPolicy) -> None:
    """Raise 400 ``unknown_parameter`` when ``params`` refuses one of the request's
    parameters beyond OpenAI's."""
    if req.extra_params:
        _refuse_params(req.extra_params, params)


def forward_body(req: CompletionRequest, max_tokens: int, model: str | None = None) -> bytes:
    """The body to send upstream: the client's bytes with the allowance ``max_tokens`` and
    the model name ``model`` (None: as sent) spliced in; the bytes as they came when nothing
    changes.

    Every allowance member the client gave with another value is rewritten (a backend may
    read either name); without one, ``max_tokens`` is set. A duplicated member is rewritten
    too, every occurrence: a backend whose parser keeps the first one must see what the
    router decided on (the last one), not bypass the output cap. Nothing else changes.
    """
    body, wire = req.body, req.wire
    updates: dict[str, bytes] = {}
    value = b"%d" % max_tokens
    if req.max_tokens is None:
        updates["max_tokens"] = value
    else:
        for key in ALLOWANCE_PARAMS:
            if body.get(key) is not None and (body[key] != max_tokens
                                              or wire.occurrences(key) > 1):
                updates[key] = value
    if (model is not None and model != req.model) or wire.occurrences("model") > 1:
        updates["model"] = json_string(req.model if model is None else model)
    return req.wire.splice(updates) if updates else req.wire.raw


def _body(raw: bytes) -> tuple[dict[str, Any], JSONBody]:
    """The body object, or the 400 that says why it is not one."""
    try:
        wire = parse_body(raw, _SPLICED)
    except BodyError as exc:
        where = f" (at '{_echo(exc.path)}')" if exc.path else ""
        if exc.problem == "not_object":
            message = f"The request body must be a JSON object, got {exc.detail}."
        elif exc.problem == "depth":
            message = (f"The request body is nested more than {MAX_DEPTH} levels deep{where};"
                       " this service accepts at most that.")
        elif exc.problem == "surrogate":
            raise APIError(
                400, f"Invalid text{where}: it holds a lone surrogate escape (\\ud800-\\udfff"
                " without its pair), which is not valid Unicode.",
                param=_echo(exc.path) if exc.path else None, code="invalid_value",
            ) from None
        else:
            message = ("We could not parse the JSON body of your request. The body must be a"
                       " JSON object encoded as UTF-8.")
        raise APIError(400, message, param=_echo(exc.path) if exc.path else None,
                       code="invalid_json") from None
    return wire.value, wire


def _refuse_params(names: Iterable[str], params: ParamPolicy) -> None:
    name = params.refused(names)
    if name is not None:
        raise APIError(400, f"Unrecognized request argument supplied: {_echo(name)}",
                       param=_echo(name), code="unknown_parameter")


_Check = Callable[[str, Any, Mapping[str, Any]], Any]
"""Validates one optional member's value (never null) given what the members checked before
it gave; returns what the request keeps of it."""


def _check_allowance(key: str, v: object, opt: Mapping[str, Any]) -> int:
    n = _int(key, v)
    if n < 1 or n > MAX_ALLOWANCE:
        raise _bad_value(
            key, f"Invalid '{key}': integer between 1 and {MAX_ALLOWANCE} expected, got {_echo(n)}."
        )
    return n


def _allowance(opt: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The output allowance and the name it was given under (the first of
    :data:`ALLOWANCE_PARAMS` present), or (None, None)."""
    for key in ALLOWANCE_PARAMS:
        if key in opt:
            return opt[key], key
    return None, None


def _check_n(key: str, v: object, opt: Mapping[str, Any]) -> None:
    if _int(key, v) != 1:
        raise APIError(
            400, "'n' greater than 1 is not supported: a compiled schedule serves one completion"
            " per request.", param="n", code="unsupported_parameter",
        )


def _check_best_of(key: str, v: object, opt: Mapping[str, Any]) -> None:
    if _int(key, v) != 1:
        raise APIError(
            400, "'best_of' greater than 1 is not supported.", param="best_of",
            code="unsupported_parameter",
        )


def _number_in(lo: float, hi: float) -> _Check:
    def check(key: str, v: object, opt: Mapping[str, Any]) -> None:
        _number(key, v, lo, hi)
    return check


def _check_int(key: str, v: object, opt: Mapping[str, Any]) -> int:
    return _int(key, v)


def _check_bool(key: str, v: object, opt: Mapping[str, Any]) -> bool:
    if not isinstance(v, bool):
        raise _bad_type(key, "a boolean", v)
    return v


def _check_str(key: str, v: object, opt: Mapping[str, Any]) -> str:
    if not isinstance(v, str):
        raise _bad_type(key, "a string", v)
    return v


def _check_stream_options(key: str, v: object, opt: Mapping[str, Any]) -> bool:
    """``include_usage``."""
    if not isinstance(v, dict):
        raise _bad_type("stream_options", "an object", v)
    if not opt.get("stream", False):
        raise _bad_value(
            "stream_options", "The 'stream_options' parameter is only allowed when 'stream'"
            " is enabled.",
        )
    include_usage = v.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad_type("stream_options.include_usage", "a boolean", include_usage)
    return include_usage


def _check_min_tokens(key: str, v: object, opt: Mapping[str, Any]) -> int:
    """vLLM's ``min_tokens``, at most the allowance."""
    min_tokens = _int(key, v)
    allowance, _ = _allowance(opt)
    if not 0 <= min_tokens <= (allowance or MAX_ALLOWANCE):
        bound = f"the allowance ({allowance})" if allowance else str(MAX_ALLOWANCE)
        raise _bad_value("min_tokens", f"Invalid 'min_tokens': {_echo(min_tokens)} must be"
                         f" between 0 and {bound}.")
    return min_tokens


def _check_repetition_penalty(key: str, v: object, opt: Mapping[str, Any]) -> None:
    _number(key, v, 0.0, 2.0**31)
    if v == 0:  # vLLM: "must be greater than zero"
        raise _bad_value("repetition_penalty", "Invalid 'repetition_penalty': must be > 0.")


def _check_tools(key: str, v: object, opt: Mapping[str, Any]) -> str:
    """The tool definitions' text, which the template renders."""
    if not isinstance(v, list):
        raise _bad_type("tools", "an array", v)
    return json.dumps(v, separators=(",", ":"))


_CHECKS: Mapping[str, _Check] = {
    "max_completion_tokens": _check_allowance,
    "max_tokens": _check_allowance,
    "n": _check_n,
    "best_of": _check_best_of,
    "temperature": _number_in(0.0, 2.0),
    "top_p": _number_in(0.0, 1.0),
    "presence_penalty": _number_in(-2.0, 2.0),
    "frequency_penalty": _number_in(-2.0, 2.0),
    "seed": _check_int,
    "stream": _check_bool,
    "stream_options": _check_stream_options,
    "service_tier": _check_str,
    "user": _check_str,
    # vLLM's sampling extensions a backend here acts on or that a client may mistype
    "ignore_eos": _check_bool,
    "min_tokens": _check_min_tokens,
    "top_k": _check_int,
    "min_p": _number_in(0.0, 1.0),
    "repetition_penalty": _check_repetition_penalty,
}
"""The optional members checked for either endpoint, in the order their faults are reported
(of several, the first): a check may read what those before it kept."""
_CHAT_CHECKS: Mapping[str, _Check] = {"tools": _check_tools, **_CHECKS}
_RANK = {key: rank for rank, key in enumerate(_CHAT_CHECKS)}


def _options(body: Mapping[str, Any], checks: Mapping[str, _Check]) -> dict[str, Any]:
    """What the request keeps of each optional member the body gives (not null), checked in
    the order of ``checks``. Only the members present are visited: a body names a few of the
    twenty."""
    keys = [key for key in body if key in checks]
    if len(keys) > 1:
        keys.sort(key=_RANK.__getitem__)
    opt: dict[str, Any] = {}
    for key in keys:
        v = body[key]
        if v is not None:
            opt[key] = checks[key](key, v, opt)
    return opt
