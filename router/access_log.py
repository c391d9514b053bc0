"""One JSON line per request at its end, on the ``lpu_router.access`` logger.

Fields: ``request_id``, ``route``, ``model``, ``bucket``, ``backend``, ``priority``, ``tenant``,
``outcome`` (completed | failed | cancelled, for admitted requests) or ``reject_reason``,
``status``, ``prompt_tokens``, ``completion_tokens``, ``predicted_ttft_ms``, ``ttft_ms``,
``e2e_ms``, ``ts`` (Unix seconds at arrival). Never the API key: the tenant's name only.

The event loop only keeps the finished exchange: the lines of the requests that end in one turn
of the loop leave as one record, at the end of that turn (``call_soon``), whose message is those
lines, one per request; the JSON encoding and the write happen on the log listener's thread
(:mod:`router.log_queue`). A record per line cost ~20 us of CPU per request in the whole router
(the record, the queue, the thread's hand-over; ``lpu-bench overhead`` with and without the
access log); a record per turn costs that once for all the turn's lines. The line itself is made
by :func:`_line`: the text ``json.dumps(fields, separators=(",", ":"))`` gives, without the dict
and the encoder (78k instructions per line under callgrind, ~8 % of a proxied request's; 31k
now). A handler that reads the records in-process gets the lines from ``record.getMessage()``
(split them at newlines); :func:`flush` logs what is pending at once (the process's exit calls
it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from router.log_queue import Deferred

__all__ = ["Exchange", "flush"]

log = logging.getLogger("lpu_router.access")


@dataclass(slots=True)
class Exchange:
    """What one request did, filled in along its way; times on the router's clock."""

    request_id: str
    route: str
    started: float
    wall_start: float
    tenant: str | None = None
    model: str | None = None
    bucket: str | None = None
    backend: str | None = None
    priority: str = "standard"
    admitted: bool = False
    outcome: str | None = None
    reject_reason: str | None = None
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    predicted_ttft_ms: float | None = None
    ttft_s: float | None = None

    def log(self, now: float) -> None:
        """Queue the request's line (its end: ``now``). The exchange must not change after
        this call: the line is made from it later, on the log listener's thread."""
        if not log.isEnabledFor(logging.INFO):
            return
        _pending.append((self, now))
        if len(_pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(flush)
            except RuntimeError:  # no loop: at once
                flush()

    def fields(self, now: float) -> dict[str, Any]:
        """The line's fields, in their order."""
        return {
            "ts": round(self.wall_start, 3),
            "request_id": self.request_id,
            "route": self.route,
            "model": _short(self.model),
            "bucket": self.bucket,
            "backend": self.backend,
            "priority": self.priority,
            "tenant": self.tenant,
            "outcome": self.outcome,
            "reject_reason": self.reject_reason,
            "status": self.status if self.status else (499 if self.outcome == "cancelled"
                                                       else None),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "predicted_ttft_ms": _ms(self.predicted_ttft_ms),
            "ttft_ms": _ms(None if self.ttft_s is None else self.ttft_s * 1e3),
            "e2e_ms": _ms((now - self.started) * 1e3),
        }


_encode = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(fields, separators=(",", ":"))``: the line's definition (:func:`_line` gives its
text)."""
_escape = json.encoder.encode_basestring_ascii
"""A JSON string as ``json.dumps`` writes it (ASCII, the rest escaped)."""
_quoted: dict[str | None, str] = {None: "null"}
"""JSON text of the strings seen, but request ids: route, bucket, backend, priority, tenant,
outcome and reason come from closed sets (the config, the enums); a client's model is one of a
few too, and the cap bounds what a client sending many could make it hold."""
_QUOTED_MAX = 1024


def _known(text: str | None) -> str:
    """``text`` as a JSON string (None: ``null``), remembered (see :data:`_quoted`)."""
    if text is None:
        return "null"
    quoted = _escape(text)
    if len(_quoted) < _QUOTED_MAX:
        _quoted[text] = quoted
    return quoted


def _text(text: str) -> str:
    """``text`` as a JSON string, not remembered (a request id: one per request). Printable
    ASCII without a quote or backslash is written as it is, which is what the escape gives."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return _escape(text)


def _ms3(v: float | None) -> str:
    """``v`` rounded to 3 decimals as JSON writes it (``repr(round(v, 3))``). Formatted once
    with 3 decimals, trailing zeros cut: the same text while that decimal has at most 15
    significant digits (it then round-trips, and nothing shorter does), and a third of the
    cost of rounding and then writing the shortest repr."""
    if v is None:
        return "null"
    if -1e12 < v < 1e12:
        text = f"{v:.3f}".rstrip("0")
        return text + "0" if text[-1] == "." else text
    return _encode(round(v, 3))  # large, infinite or NaN: as the encoder writes it


def _line(ex: Exchange, now: float) -> str:
    """``_encode(ex.fields(now))``: the same text, field by field."""
    q = _quoted.get
    model = _short(ex.model)
    status = ex.status if ex.status else (499 if ex.outcome == "cancelled" else None)
    prompt, completion, ttft = ex.prompt_tokens, ex.completion_tokens, ex.ttft_s
    # The counts are ints (never bools): formatted, an int is its repr, as the encoder writes it.
    return (
        f'{{"ts":{_ms3(ex.wall_start)},"request_id":{_text(ex.request_id)},'
        f'"route":{q(ex.route) or _known(ex.route)},'
        f'"model":{q(model) or _known(model)},'
        f'"bucket":{q(ex.bucket) or _known(ex.bucket)},'
        f'"backend":{q(ex.backend) or _known(ex.backend)},'
        f'"priority":{q(ex.priority) or _known(ex.priority)},'
        f'"tenant":{q(ex.tenant) or _known(ex.tenant)},'
        f'"outcome":{q(ex.outcome) or _known(ex.outcome)},'
        f'"reject_reason":{q(ex.reject_reason) or _known(ex.reject_reason)},'
        f'"status":{"null" if status is None else status},'
        f'"prompt_tokens":{"null" if prompt is None else prompt},'
        f'"completion_tokens":{"null" if completion is None else completion},'
        f'"predicted_ttft_ms":{_ms3(ex.predicted_ttft_ms)},'
        f'"ttft_ms":{_ms3(None if ttft is None else ttft * 1e3)},'
        f'"e2e_ms":{_ms3((now - ex.started) * 1e3)}}}'
    )


_pending: list[tuple[Exchange, float]] = []
"""Exchanges that ended in this turn of the loop, with their end times."""


def flush() -> None:
    """Log the pending lines now, as one record."""
    global _pending
    if _pending:
        lines, _pending = _pending, []
        log.info(_Lines(lines))


class _Lines(Deferred):
    """Access lines: finished exchanges, their JSON text (one line each) made when written."""

    __slots__ = ("exchanges",)

    def __init__(self, exchanges: list[tuple[Exchange, float]]) -> None:
        self.exchanges = exchanges

    def __str__(self) -> str:
        return "\n".join([_line(ex, now) for ex, now in self.exchanges])


_MODEL_CHARS = 128
"""A client's ``model`` is logged up to this length (a 1 MB name is not logged whole)."""


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= _MODEL_CHARS:
        return text
    return text[:_MODEL_CHARS] + f"...({len(text)} chars)"


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
