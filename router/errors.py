"""The one place where failures become the router's errors, outcomes and HTTP statuses.

Two families:

* :class:`Rejection`: the router refuses a request before (or instead of) a backend serving it.
  Its :class:`~router.outcomes.RejectReason` is the metric label and log field; its HTTP status
  comes from :data:`REJECT_STATUS`.
* :class:`UpstreamFailure`: talking to a backend failed. :func:`map_client_error` turns aiohttp
  client exceptions into one, :func:`map_upstream_status` does the same for a backend's error
  status. Each says whether another replica may be tried (only while nothing was sent to the
  client) and whether it counts against the backend's health.

============================  ======  =====================  =========  =========
failure                       status  kind (metric label)    retryable  health
============================  ======  =====================  =========  =========
connection refused / reset    503     connect                yes        yes
connect timeout               504     connect_timeout        yes        yes
read timeout (sock_read)      504     read_timeout           no         yes
disconnected before headers   502     disconnected           yes        suspect
disconnected mid-body         502     disconnected           no         yes
backend 502, 503, 504         502/3   status_5xx             yes        yes
backend 500, other 5xx        502     status_5xx             yes        suspect
backend 429 (deadline)        429     deadline               yes        no
drain deadline (Draining)     503     shutdown               no         no
============================  ======  =====================  =========  =========

*Suspect*: the backend had the whole request when it failed, so the request itself may be the
cause (a body the backend cannot handle fails on every replica). Such a failure is not charged
to the backend at once: the request gets a second opinion on another replica, and the first
failure is charged only if the second replica serves the request (the request was innocent).
When a second replica fails it too, the request is the cause: neither is charged and it is not
tried again (:mod:`router.handlers`). A backend error status whose OpenAI error body has type
``invalid_request_error`` is the backend's own word that the request is at fault: it is
relayed to the client as it is, neither retried nor charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from lpu_protocol.headers import X_LPU_PREDICTED_TTFT_MS, X_LPU_REJECT_REASON, X_LPU_SCHEDULE
from lpu_protocol.openai_api import APIError
from router.backend_http import ConnectError
from router.outcomes import RejectReason

__all__ = [
    "REJECT_STATUS",
    "Draining",
    "Rejection",
    "UpstreamFailure",
    "error_response",
    "map_client_error",
    "map_upstream_status",
    "refusal_error",
    "retry_after_headers",
]

_R = RejectReason
REJECT_STATUS: dict[RejectReason, int] = {
    _R.INVALID_REQUEST: 400, _R.UNKNOWN_MODEL: 404, _R.CONTEXT_LENGTH: 400,
    _R.MAX_TOKENS_CAP: 400, _R.UNAUTHORIZED: 401, _R.SLO_TTFT: 429, _R.SLO_E2E: 429,
    _R.UTILIZATION: 429, _R.QUEUE_FULL: 429, _R.CONCURRENCY: 429, _R.TENANT_RPM: 429,
    _R.TENANT_TPM: 429, _R.BACKEND_DEADLINE: 429, _R.NO_BACKEND: 503, _R.SHUTTING_DOWN: 503,
    _R.BODY_MEMORY: 503, _R.BODY_RATE: 503, _R.LIMITS_UNAVAILABLE: 503,
}


class Rejection(Exception):
    """A refusal with its reason, its OpenAI-shaped error and an optional retry hint."""

    def __init__(self, reason: RejectReason, error: APIError,
                 retry_after_s: float | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = dict(headers) if headers is not None else {
            **retry_after_headers(retry_after_s), X_LPU_REJECT_REASON: str(reason)}
        """The response's headers: by default ``Retry-After`` and ``x-lpu-reject-reason``;
        given ones (e.g. with the admission prediction behind the refusal) replace them."""


def error_response(error: APIError, headers: Mapping[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped JSON error response."""
    return web.Response(status=error.status, body=error.to_json(), headers=headers,
                        content_type="application/json")


def refusal_error(reason: RejectReason, message: str) -> APIError:
    """The OpenAI-shaped error for an admission refusal (429 like OpenAI's rate limits)."""
    status = REJECT_STATUS.get(reason, 429)
    if status == 429:
        text = message or f"Request refused by admission control ({reason})."
        return APIError(429, text, type="requests", code="rate_limit_exceeded")
    text = message or f"No backend can take this request now ({reason})."
    return APIError(status, text, type="server_error", code=str(reason))


def retry_after_headers(retry_after_s: float | None) -> dict[str, str]:
    """``Retry-After`` (integer seconds, ceil, at least 1) and ``retry-after-ms``."""
    if retry_after_s is None:
        return {}
    s = max(0.0, retry_after_s)
    return {"Retry-After": str(max(1, math.ceil(s))), "retry-after-ms": str(math.ceil(s * 1e3))}


class UpstreamFailure(Exception):
    """A failure talking to one backend, already classified."""

    def __init__(self, kind: str, status: int, message: str, *, retryable: bool,
                 health: bool = True, suspect: bool = False, reason: RejectReason | None = None,
                 predicted_ttft_s: float | None = None, schedule: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.retryable = retryable
        self.health = health
        self.suspect = suspect
        """The backend had the request: it may have failed because of the request (see the
        module docstring); charged to the backend only once another replica served it."""
        self.reason = reason
        self.predicted_ttft_s = predicted_ttft_s
        """A deadline refusal's TTFT as the backend predicted it (``x-lpu-predicted-ttft-ms``),
        in seconds; None when it gave none."""
        self.schedule = schedule
        """A deadline refusal's ``x-lpu-schedule`` header as the backend sent it (None: none)."""

    def api_error(self) -> APIError:
        if self.reason is not None:
            return refusal_error(self.reason, self.message)
        code = "upstream_timeout" if self.status == 504 else "upstream_error"
        return APIError(self.status, self.message, type="server_error", code=code)


class Draining(aiohttp.ClientError):
    """Set on an upstream response at the router's drain deadline (see ``router.lifecycle``)."""


def map_client_error(exc: BaseException, *, got_headers: bool) -> UpstreamFailure:
    """Classify an aiohttp client exception; ``got_headers``: the backend's status line came."""
    if isinstance(exc, Draining):
        return UpstreamFailure("shutdown", 503, "The router is shutting down: the response was"
                               " ended at its drain deadline.", retryable=False, health=False,
                               reason=RejectReason.SHUTTING_DOWN)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure("connect_timeout", 504, "Timed out connecting to the backend.",
                               retryable=True)
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return UpstreamFailure("read_timeout", 504, "The backend stopped sending in time.",
                               retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectError):
        return UpstreamFailure("connect", 503, "The backend refused the connection.",
                               retryable=True)
    if isinstance(exc, aiohttp.ClientError | ConnectionError):
        return UpstreamFailure("disconnected", 502, "The backend closed the connection.",
                               retryable=not got_headers, suspect=not got_headers)
    raise exc


def map_upstream_status(status: int, body: bytes,
                        headers: Mapping[str, str] | None = None) -> UpstreamFailure | None:
    """A backend error status that the router handles itself; None: relay it to the client.

    ``headers``: the backend's response headers (a 429's ``x-lpu-predicted-ttft-ms``).
    """
    if status == 429:
        message = "The backend cannot produce the first token by the deadline."
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = str(json.loads(body)["error"]["message"])
        return UpstreamFailure("deadline", 429, message, retryable=True, health=False,
                               reason=RejectReason.BACKEND_DEADLINE,
                               predicted_ttft_s=_header_ms(headers, X_LPU_PREDICTED_TTFT_MS),
                               schedule=None if headers is None else headers.get(X_LPU_SCHEDULE))
    if status >= 500:
        if _blames_request(body):
            return None
        # 502/503/504 speak of the server's own state (unavailable, overloaded, its upstream
        # gone); a 500 or another 5xx may be how it fails on this one request.
        return UpstreamFailure("status_5xx", 503 if status == 503 else 502,
                               f"The backend answered {status}.", retryable=True,
                               suspect=status not in _SERVER_STATE)
    return None


_SERVER_STATE = frozenset({502, 503, 504})


def _blames_request(body: bytes) -> bool:
    """The backend's error body says the request is at fault (``invalid_request_error``)."""
    if b"invalid_request_error" not in body:
        return False
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and error.get("type") == "invalid_request_error"


def _header_ms(headers: Mapping[str, str] | None, name: str) -> float | None:
    """A header holding milliseconds, in seconds; None when absent or not a finite number >= 0."""
    raw = headers.get(name) if headers is not None else None
    try:
        ms = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return ms / 1e3 if math.isfinite(ms) and ms >= 0 else None
