"""One JSON line per request at its end, on the ``lpu_router.access`` logger.

Fields: ``request_id``, ``route``, ``model``, ``bucket``, ``backend``, ``priority``, ``tenant``,
``outcome`` (completed | failed | cancelled, for admitted requests) or ``reject_reason``,
``status``, ``prompt_tokens``, ``completion_tokens``, ``predicted_ttft_ms``, ``ttft_ms``,
``e2e_ms``, ``ts`` (Unix seconds at arrival). Never the API key: the tenant's name only.

The event loop only snapshots the fields into a dict and queues the record; the JSON encoding
and the write happen on the log listener's thread (:mod:`router.log_queue`). Measured with
``timeit`` on the 2-core dev machine, per line on the loop: 5.6 us so, 8.8 us with the encoding
on the loop, 14 us for the synchronous write to a pipe this replaced (docs/router.md has the
whole process's figures). A handler that reads the record in-process gets the same line from
``record.getMessage()``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from router.log_queue import Deferred

__all__ = ["Exchange"]

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
        if log.isEnabledFor(logging.INFO):
            log.info(_Line(self, now))

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


class _Line(Deferred):
    """One access line: the finished exchange, its JSON text made when written."""

    __slots__ = ("exchange", "now")

    def __init__(self, exchange: Exchange, now: float) -> None:
        self.exchange = exchange
        self.now = now

    def __str__(self) -> str:
        return _encode(self.exchange.fields(self.now))


_MODEL_CHARS = 128
"""A client's ``model`` is logged up to this length (a 1 MB name is not logged whole)."""


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= _MODEL_CHARS:
        return text
    return text[:_MODEL_CHARS] + f"...({len(text)} chars)"


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
