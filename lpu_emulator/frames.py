"""Response bodies and SSE frames, byte for byte as OpenAI sends them.

Streams (``text/event-stream``): for chat, the first chunk carries
``delta.role``; every token is one chunk; the last chunk carries
``finish_reason`` and Groq's ``x_groq`` (``id`` and ``usage`` with the timing);
with ``stream_options.include_usage`` every chunk has ``"usage": null`` and one
more chunk with ``"choices": []`` and the usage follows; then ``data: [DONE]``.

A tool call (:class:`lpu_emulator.tools.ToolCall`) replaces the content: the
non-streaming message has ``content: null`` and ``tool_calls``; a stream's
first chunk carries the call's ``index``, ``id``, ``type`` and ``function.name``
with empty ``arguments``, each token chunk one piece of the arguments
(``tool_calls[{index, function: {arguments}}]``), as OpenAI streams them.

A write's tokens cost one join: each stream precomputes the bytes before and
after the token's JSON string (and the two together, which go between two
tokens), and token JSON strings are precomputed in
:class:`lpu_emulator.text.TokenText`.

Timing (seconds, from the exact schedule): ``queue_time`` = start - arrival,
``prompt_time`` = prefill, ``completion_time`` = the remaining ``n - 1`` token
times, ``total_time`` = prompt_time + completion_time (as Groq reports it: the
queue is not included).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lpu_emulator.tools import ToolCall
from lpu_protocol.openai_api import APIError

__all__ = ["DONE", "ResponseIdentity", "StreamFrames", "Timing", "completion_body", "usage"]

DONE = b"data: [DONE]\n\n"


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(obj, separators=(",", ":"))`` without building an encoder per call."""


def _dumps(obj: object) -> bytes:
    return _ENCODE(obj).encode()


@dataclass(frozen=True, slots=True)
class ResponseIdentity:
    """What every body and chunk of one response repeats."""

    kind: Literal["chat", "completion"]
    id: str
    """``chatcmpl-...`` or ``cmpl-...``."""
    created: int
    """Unix seconds."""
    model: str
    system_fingerprint: str
    groq_id: str
    """``req_...``: Groq's request id in ``x_groq.id``."""


@dataclass(frozen=True, slots=True)
class Timing:
    queue_s: float
    prompt_s: float
    completion_s: float


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _groq(ident: ResponseIdentity, use: dict[str, int], t: Timing) -> dict[str, Any]:
    return {
        "id": ident.groq_id,
        "usage": {
            "queue_time": round(t.queue_s, 6),
            "prompt_tokens": use["prompt_tokens"],
            "prompt_time": round(t.prompt_s, 6),
            "completion_tokens": use["completion_tokens"],
            "completion_time": round(t.completion_s, 6),
            "total_tokens": use["total_tokens"],
            "total_time": round(t.prompt_s + t.completion_s, 6),
        },
    }


def _head(ident: ResponseIdentity, obj: str) -> dict[str, Any]:
    return {
        "id": ident.id,
        "object": obj,
        "created": ident.created,
        "model": ident.model,
        "system_fingerprint": ident.system_fingerprint,
    }


def _call(call: ToolCall, arguments: str) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


def completion_body(
    ident: ResponseIdentity, text: str, finish_reason: str, use: dict[str, int], t: Timing,
    tool_call: ToolCall | None = None,
) -> bytes:
    """The JSON body of a non-streaming response (``text`` is unused with a ``tool_call``)."""
    choice: dict[str, Any]
    if ident.kind == "chat":
        body = _head(ident, "chat.completion")
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_call is not None:
            message = {"role": "assistant", "content": None,
                       "tool_calls": [_call(tool_call, tool_call.arguments)]}
        choice = {"index": 0, "message": message}
        choice |= {"logprobs": None, "finish_reason": finish_reason}
    else:
        body = _head(ident, "text_completion")
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
    groq = _groq(ident, use, t)
    body["choices"] = [choice]
    body["usage"] = use | groq["usage"]
    body["x_groq"] = groq
    return _dumps(body)


class StreamFrames:
    """The SSE frames of one streaming response.

    With a ``tool_call`` the token chunks carry its argument pieces: :meth:`tokens` is then
    given positions into ``tool_call.fragments`` (0, 1, ...) rather than vocabulary ids.
    """

    __slots__ = ("_between", "_call", "_fragments", "_head", "_ident", "_include_usage",
                 "_tail")

    def __init__(self, ident: ResponseIdentity, include_usage: bool,
                 tool_call: ToolCall | None = None) -> None:
        self._ident = ident
        self._include_usage = include_usage
        self._call = tool_call
        self._fragments = () if tool_call is None else tuple(
            json.dumps(f).encode() for f in tool_call.fragments)
        # Split a token chunk around the token's JSON string, so a token costs one
        # concatenation. The marker cannot occur in the identity fields' JSON.
        marker = "\x00TOKEN\x00"
        payload: object = {"content": marker}
        if ident.kind == "completion":
            payload = marker
        elif tool_call is not None:
            payload = {"tool_calls": [{"index": 0, "function": {"arguments": marker}}]}
        chunk = self._chunk(payload, None)
        head, tail = chunk.split(_dumps(marker), 1)
        self._head = b"data: " + head
        self._tail = tail + b"\n\n"
        self._between = self._tail + self._head

    def _chunk(self, payload: object, finish_reason: str | None, **extra: Any) -> bytes:
        ident = self._ident
        if ident.kind == "chat":
            obj = _head(ident, "chat.completion.chunk")
            choice = {"index": 0, "delta": payload, "logprobs": None}
        else:
            obj = _head(ident, "text_completion")
            choice = {"text": payload, "index": 0, "logprobs": None}
        choice["finish_reason"] = finish_reason
        obj["choices"] = [choice]
        if self._include_usage:
            obj["usage"] = None
        obj |= extra
        return _dumps(obj)

    def start(self) -> bytes:
        """What precedes the first token: the role chunk for chat, nothing for completions."""
        if self._ident.kind != "chat":
            return b""
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        if self._call is not None:
            delta = {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, **_call(self._call, "")}]}
        return b"data: " + self._chunk(delta, None) + b"\n\n"

    def tokens(self, token_json: Sequence[bytes], ids: Sequence[int]) -> bytes:
        """One frame per token id, concatenated (with a tool call: per argument piece)."""
        if not ids:
            return b""
        if self._call is not None:
            token_json = self._fragments
        # head + t0 + tail + head + t1 + tail ...: one join with tail + head between tokens.
        return self._head + self._between.join([token_json[i] for i in ids]) + self._tail

    def finish(self, finish_reason: str, use: dict[str, int], t: Timing) -> bytes:
        """The last chunk (finish reason and ``x_groq``), the usage chunk if asked, [DONE]."""
        groq = _groq(self._ident, use, t)
        empty: object = {} if self._ident.kind == "chat" else ""
        out = b"data: " + self._chunk(empty, finish_reason, x_groq=groq) + b"\n\n"
        if self._include_usage:
            obj = _head(self._ident, self._chunk_object())
            obj["choices"] = []
            obj["usage"] = use
            out += b"data: " + _dumps(obj) + b"\n\n"
        return out + DONE

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self._ident.kind == "chat" else "text_completion"

    @staticmethod
    def error(err: APIError) -> bytes:
        """The frame that ends a stream failing after its first byte."""
        return b"data: " + err.to_json() + b"\n\n"

    def garbage(self) -> bytes:
        """A frame cut in the middle of its JSON (fault injection)."""
        whole = self._chunk({"content": " garbled"} if self._ident.kind == "chat" else "", None)
        return b"data: " + whole[: len(whole) // 2] + b"\n\n"
