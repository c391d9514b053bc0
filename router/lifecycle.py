"""The router's life after SIGTERM: drain, and the guards every completion request passes first.

:class:`Lifecycle` is one app's state machine, ``serving -> draining -> stopped``:

* :meth:`Lifecycle.start_drain` (SIGTERM, or a reload retiring this generation): ``/readyz``
  turns 503 (``on_drain`` callbacks), and a completion request that still arrives on an open
  keep-alive connection gets 503 ``shutting_down`` with ``Connection: close``.
* :meth:`Lifecycle.wait_idle` waits until no completion request is in progress, at most
  ``server.drain_s`` seconds.
* :meth:`Lifecycle.end_in_flight` runs the ``on_deadline`` callbacks: the relay ends every
  stream still open with an SSE error frame and ``data: [DONE]`` (see
  :meth:`router.relay.Upstream.abort_all`), non-streaming requests get 503.

:func:`lifecycle_middleware` counts completion requests in progress (the drain waits for them)
and reads their body under ``server.body_timeout_s``: a client that sends its body too slowly
(byte by byte) gets 408 ``request_timeout`` and the connection is closed. The body is read here
once; aiohttp caches it, so the handler's ``request.read()`` costs nothing. A body that has
already arrived whole (the common case: a small JSON body comes with the headers) is read
without arming the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from router.errors import REJECT_STATUS
from router.handlers import error_response
from router.metrics import RouterMetrics
from router.openai_api import APIError
from router.outcomes import RejectReason

__all__ = ["COMPLETION_PATHS", "LIFECYCLE", "Lifecycle", "lifecycle_middleware"]

COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Lifecycle:
    """Drain state of one app, and the completion requests in progress in it."""

    def __init__(self, *, on_drain: Sequence[Callable[[], None]] = (),
                 on_deadline: Sequence[Callable[[], int]] = ()) -> None:
        self.draining = False
        self.in_progress = 0
        self.on_drain = tuple(on_drain)
        """Called once when the drain starts (e.g. turn ``/readyz`` 503)."""
        self.on_deadline = tuple(on_deadline)
        """Called at the drain deadline; each returns how many requests it ended."""
        self._idle = asyncio.Event()
        self._idle.set()

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
        """The drain deadline: end what still runs (clean SSE end); how many were ended."""
        return sum(callback() for callback in self.on_deadline)

    def entered(self) -> None:
        self.in_progress += 1
        self._idle.clear()

    def left(self) -> None:
        self.in_progress -= 1
        if self.in_progress == 0:
            self._idle.set()


def _shutting_down() -> APIError:
    return APIError(REJECT_STATUS[RejectReason.SHUTTING_DOWN],
                    "The router is shutting down; retry on another instance.",
                    type="server_error", code=str(RejectReason.SHUTTING_DOWN))


def _body_timeout(timeout_s: float) -> APIError:
    return APIError(408, f"The request body did not arrive within {timeout_s:g} s.",
                    code="request_timeout")


def lifecycle_middleware(lifecycle: Lifecycle, metrics: RouterMetrics, *,
                         body_timeout_s: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuse completions while draining; count them in progress; time out slow bodies."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in COMPLETION_PATHS:
            return await handler(request)
        if lifecycle.draining:
            metrics.requests_rejected.labels("none", "standard",
                                             str(RejectReason.SHUTTING_DOWN)).inc()
            resp = error_response(_shutting_down(), {"Retry-After": "1"})
            resp.force_close()
            return resp
        lifecycle.entered()
        try:
            try:
                if request.content.is_eof():
                    await request.read()
                else:
                    async with asyncio.timeout(body_timeout_s):
                        await request.read()
            except TimeoutError:
                metrics.requests_rejected.labels("none", "standard",
                                                 str(RejectReason.INVALID_REQUEST)).inc()
                resp = error_response(_body_timeout(body_timeout_s))
                resp.force_close()
                return resp
            return await handler(request)
        finally:
            lifecycle.left()

    return guard


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
