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
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lpu_protocol.json_body import MAX_DEPTH, BodyError, JSONBody, json_type_name, parse_body
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


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    text: str
    """All text the chat template would render for this message (content parts,
    tool call arguments and names joined)."""


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated completion request, chat or legacy."""

    kind: Literal["chat", "completion"]
    model: str
    body: dict[str, Any] = field(repr=False)
    wire: JSONBody = field(repr=False)
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


def _bad_type(param: str, expected: str, got: object) -> APIError:
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(got)} instead.",
        param=param,
        code="invalid_type",
    )


def _bad_value(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad_type(key, "an integer", v)
    return v


def _opt_number(body: Mapping[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad_type(key, "a number", v)
    if not (math.isfinite(v) and lo <= v <= hi):
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
        path = f"messages[{i}]"
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
        out.append(Message(role=role, text="\n".join(e for e in extras if e)))
    return tuple(out)


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
    known = _CHAT_PARAMS if kind == "chat" else _COMPLETION_PARAMS
    extra_params = tuple(key for key in body if key not in known)
    if params is not None:
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
    extra = ""
    if kind == "chat":
        messages = _messages(body.get("messages"))
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise _bad_type("tools", "an array", tools)
            extra = json.dumps(tools, separators=(",", ":"))
    else:
        prompt, token_ids = _prompt(body.get("prompt"))

    param: str | None = None
    allowance: int | None = None
    for key in ("max_completion_tokens", "max_tokens"):
        v = _opt_int(body, key)
        if v is None:
            continue
        if v < 1 or v > MAX_ALLOWANCE:
            raise _bad_value(
                key, f"Invalid '{key}': integer between 1 and {MAX_ALLOWANCE} expected,"
                f" got {_echo(v)}."
            )
        if allowance is None:
            allowance, param = v, key

    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise APIError(
            400, "'n' greater than 1 is not supported: a compiled schedule serves one completion"
            " per request.", param="n", code="unsupported_parameter",
        )
    best_of = _opt_int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise APIError(
            400, "'best_of' greater than 1 is not supported.", param="best_of",
            code="unsupported_parameter",
        )
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0)
    _opt_number(body, "presence_penalty", -2.0, 2.0)
    _opt_number(body, "frequency_penalty", -2.0, 2.0)
    seed = _opt_int(body, "seed")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad_type("stream", "a boolean", stream)
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad_type("stream_options", "an object", opts)
        if not stream:
            raise _bad_value(
                "stream_options", "The 'stream_options' parameter is only allowed when 'stream'"
                " is enabled.",
            )
        iu = opts.get("include_usage", False)
        if not isinstance(iu, bool):
            raise _bad_type("stream_options.include_usage", "a boolean", iu)
        include_usage = iu
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise _bad_type("service_tier", "a string", tier)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad_type("user", "a string", user)
    ignore_eos, min_tokens = _vllm_params(body, allowance)
    return CompletionRequest(
        kind=kind,
        model=model,
        body=body,
        wire=wire,
        messages=messages,
        prompt=prompt,
        prompt_token_ids=token_ids,
        extra_text=extra,
        max_tokens=allowance,
        max_tokens_param=param,
        stream=stream,
        include_usage=include_usage,
        seed=seed,
        service_tier=tier,
        user=user,
        ignore_eos=ignore_eos,
        min_tokens=min_tokens,
        extra_params=extra_params,
    )


def check_params(req: CompletionRequest, params: ParamPolicy) -> None:
    """Raise 400 ``unknown_parameter`` when ``params`` refuses one of the request's
    parameters beyond OpenAI's."""
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
    body, spans = req.body, req.wire.spans
    updates: dict[str, bytes] = {}
    value = str(max_tokens).encode()
    if req.max_tokens is None:
        updates["max_tokens"] = value
    else:
        for key in ALLOWANCE_PARAMS:
            if body.get(key) is not None and (body[key] != max_tokens
                                              or len(spans.get(key, ())) > 1):
                updates[key] = value
    target = req.model if model is None else model
    if target != req.model or len(spans.get("model", ())) > 1:
        updates["model"] = json.dumps(target).encode()
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


def _vllm_params(body: Mapping[str, Any], allowance: int | None) -> tuple[bool, int]:
    """Check vLLM's sampling extensions a backend here acts on or that a client may mistype;
    return ``ignore_eos`` and ``min_tokens``."""
    ignore_eos = body.get("ignore_eos")
    if ignore_eos is None:
        ignore_eos = False
    if not isinstance(ignore_eos, bool):
        raise _bad_type("ignore_eos", "a boolean", ignore_eos)
    min_tokens = _opt_int(body, "min_tokens") or 0
    if not 0 <= min_tokens <= (allowance or MAX_ALLOWANCE):
        bound = f"the allowance ({allowance})" if allowance else str(MAX_ALLOWANCE)
        raise _bad_value("min_tokens", f"Invalid 'min_tokens': {_echo(min_tokens)} must be"
                         f" between 0 and {bound}.")
    _opt_int(body, "top_k")
    _opt_number(body, "min_p", 0.0, 1.0)
    _opt_number(body, "repetition_penalty", 0.0, 2.0**31)
    if body.get("repetition_penalty") == 0:  # vLLM: "must be greater than zero"
        raise _bad_value("repetition_penalty", "Invalid 'repetition_penalty': must be > 0.")
    return ignore_eos, min_tokens
