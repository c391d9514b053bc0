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
access log); a record per turn costs that once for all the turn's lines. A handler that reads
the records in-process gets the lines from ``record.getMessage()`` (split them at newlines);
:func:`flush` logs what is pending at once (the process's exit calls it).
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
"""``json.dumps(fields, separators=(",", ":"))``, without building an encoder per line."""


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
        return "\n".join([_encode(ex.fields(now)) for ex, now in self.exchanges])


_MODEL_CHARS = 128
"""A client's ``model`` is logged up to this length (a 1 MB name is not logged whole)."""


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= _MODEL_CHARS:
        return text
    return text[:_MODEL_CHARS] + f"...({len(text)} chars)"


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
