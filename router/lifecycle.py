"""The router's life after SIGTERM or a reload, and the guards every completion request passes
first.

:class:`Lifecycle` is one app's state machine, ``serving -> retiring | draining -> stopped``:

* :meth:`Lifecycle.retire` (a reload retiring this generation): requests that still arrive on
  this generation's open keep-alive connections are *served*, and every response carries
  ``Connection: close``, so each client's next request opens a connection to the new
  generation. Nothing is refused: a reload loses no request.
* :meth:`Lifecycle.start_drain` (SIGTERM): ``/readyz`` turns 503 (``on_drain`` callbacks), and a
  completion request that still arrives on an open keep-alive connection gets 503
  ``shutting_down`` with ``Connection: close``.
* :meth:`Lifecycle.wait_idle` waits until no completion request is in progress, at most
  ``server.drain_s`` seconds.
* :meth:`Lifecycle.end_in_flight` runs the ``on_deadline`` callbacks: the relay ends every
  upstream request still running (:meth:`router.relay.Upstream.abort_all`): a stream with an
  SSE error frame and ``data: [DONE]``, a non-streaming request (waiting for its status line
  or its body) with 503 ``shutting_down``.

:func:`completion_guard` counts completion requests in progress (the drain waits for them)
and reads their body (:func:`router.body_memory.read_body`) within the app's body-memory budget
and under ``server.body_timeout_s``: a body that does not fit in the budget is not read (503
``body_memory_exhausted``); a client that sends its body too slowly (byte by byte) gets 408
``request_timeout``; the connection is closed after either. The body is read here once and
cached, so the handler's ``request.read()`` costs nothing. A body that has already arrived
whole (the common case: a small JSON body comes with the headers) is read without arming the
timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web

from lpu_protocol.openai_api import APIError
from router.body_memory import BodyBudget, OverBudget, Reservation, read_body
from router.body_rate import LARGE_BODY_BYTES, MAX_WAIT_S, LargeBodyRate
from router.errors import REJECT_STATUS, error_response, retry_after_headers
from router.metrics import RouterMetrics
from router.outcomes import RejectReason
from router.series import Children

__all__ = ["LIFECYCLE", "Lifecycle", "close_when_leaving", "completion_guard"]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Lifecycle:
    """Drain state of one app, and the completion requests in progress in it."""

    def __init__(self, *, on_drain: Sequence[Callable[[], None]] = (),
                 on_deadline: Sequence[Callable[[], int]] = ()) -> None:
        self.draining = False
        self.retiring = False
        self.in_progress = 0
        self.on_drain = tuple(on_drain)
        """Called once when the drain starts (e.g. turn ``/readyz`` 503)."""
        self.on_deadline = tuple(on_deadline)
        """Called at the drain deadline; each returns how many requests it ended."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def leaving(self) -> bool:
        """Retiring or draining: every response closes its connection."""
        return self.retiring or self.draining

    def retire(self) -> None:
        """Keep serving, but close every connection after its next response (idempotent)."""
        self.retiring = True

    def start_drain(self) -> None:
        """Refuse new completion requests from now on (idempotent)."""
        if self.draining:
            return
        self.draining = True
        for callback in self.on_drain:
            callback()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no completion request is in progress; False when ``timeout_s`` ran out."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self.in_progress == 0

    def end_in_flight(self) -> int:
        """The drain deadline: end what still runs (clean SSE end, 503); how many were ended."""
        return sum(callback() for callback in self.on_deadline)

    def entered(self) -> None:
        self.in_progress += 1
        self._idle.clear()

    def left(self) -> None:
        self.in_progress -= 1
        if self.in_progress == 0:
            self._idle.set()


def close_when_leaving(lifecycle: Lifecycle) -> Callable[[web.Request, web.StreamResponse],
                                                         Awaitable[None]]:
    """An ``on_response_prepare`` callback: while ``lifecycle`` is leaving, every response
    (streams too: their headers are decided inside the handler) says ``Connection: close``
    and its connection closes after it."""

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        if lifecycle.leaving:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    return prepare


def _shutting_down() -> APIError:
    return APIError(REJECT_STATUS[RejectReason.SHUTTING_DOWN],
                    "The router is shutting down; retry on another instance.",
                    type="server_error", code=str(RejectReason.SHUTTING_DOWN))


def _body_timeout(timeout_s: float) -> APIError:
    return APIError(408, f"The request body did not arrive within {timeout_s:g} s.",
                    code="request_timeout")


def completion_guard(lifecycle: Lifecycle, metrics: RouterMetrics, *,
                     body_timeout_s: float, budget: BodyBudget, max_body_bytes: int,
                     large: LargeBodyRate | None = None) -> Callable[[Handler], Handler]:
    """A wrapper for the completion handlers (not a middleware: the other routes never pay
    for it): refuse completions while draining; count them in progress; read their bodies
    within ``budget``, ``body_timeout_s`` and the ``large`` bodies' rate."""

    rejected = Children(metrics.requests_rejected)

    def refuse(reason: RejectReason, error: APIError,
               headers: dict[str, str] | None = None) -> web.Response:
        rejected("none", "standard", reason).inc()
        resp = error_response(error, headers)
        resp.force_close()
        return resp

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if lifecycle.draining:
                return refuse(RejectReason.SHUTTING_DOWN, _shutting_down(), {"Retry-After": "1"})
            length = request.content_length
            wait = 0.0
            if large is not None and length is not None and length >= LARGE_BODY_BYTES:
                wait = large.reserve(length)
                if wait > MAX_WAIT_S:  # sent again after this, it waits at most MAX_WAIT_S
                    return refuse(RejectReason.BODY_RATE, large.error(),
                                  retry_after_headers(wait - MAX_WAIT_S))
            held = Reservation(budget)
            lifecycle.entered()
            try:
                if wait:  # the body waits in the kernel: TCP holds the sender back meanwhile
                    await asyncio.sleep(wait)
                try:
                    if request.content.is_eof():
                        await read_body(request, held, max_body_bytes)
                    else:
                        async with asyncio.timeout(body_timeout_s):
                            await read_body(request, held, max_body_bytes)
                except OverBudget as exc:
                    return refuse(RejectReason.BODY_MEMORY, exc.error, {"Retry-After": "1"})
                except TimeoutError:
                    return refuse(RejectReason.INVALID_REQUEST, _body_timeout(body_timeout_s))
                if large is not None and length is None and held.taken >= LARGE_BODY_BYTES:
                    large.charge(held.taken)  # chunked: known only now
                return await handler(request)
            finally:
                held.close()
                lifecycle.left()

        return guarded

    return wrap


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
