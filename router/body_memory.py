"""The memory request bodies may hold: one budget per app, ``server.max_body_memory_bytes``.

A completion request's body is held from the moment it is read until its answer is sent (the
handler forwards it upstream). :class:`BodyBudget` counts those bytes: :func:`read_body`
reserves a body's ``Content-Length`` *before* reading any of it, and a chunked body's bytes as
they arrive; the reservation is returned when the request ends. A body that does not fit is
not read at all: the request gets 503 ``body_memory_exhausted`` (``Retry-After: 1``,
``Connection: close``), so a crowd of large bodies costs the router at most the budget, and
other clients are served meanwhile.

A body sent with a ``Content-Encoding`` is decoded here, within the same limits
(:mod:`router.body_encoding`). The body is read into a list of chunks joined once (aiohttp's
own ``read()`` copies it twice) and handed to aiohttp's cache, so the handler's
``request.read()`` costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import hdrs, web
from prometheus_client import Gauge

from lpu_protocol.openai_api import APIError
from router.body_encoding import decoded

__all__ = ["TRIM_AFTER_BYTES", "TRIM_DELAY_S", "BodyBudget", "OverBudget", "Reservation",
           "read_body"]

TRIM_AFTER_BYTES = 16 * 1024 * 1024
"""Once this many body bytes went through since the last trim and none is held any more, the
heap is trimmed (``on_empty``): freed pages go back to the system."""
TRIM_DELAY_S = 1.0
"""How long after the last body is released the trim runs, if none is held then: the request
objects that point at the bodies are freed after their reservation ends."""


class OverBudget(Exception):
    """The body does not fit in what is left of the budget."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.error = APIError(
            503, f"The router holds as many request bodies as it may ({limit} bytes,"
            " server.max_body_memory_bytes); retry shortly.", type="server_error",
            code="body_memory_exhausted")


class BodyBudget:
    """Bytes of request bodies held, at most ``limit`` (``gauge`` shows the count).

    ``on_empty`` runs :data:`TRIM_DELAY_S` after the count fell back to zero, when it still is,
    once at least :data:`TRIM_AFTER_BYTES` were reserved since it last ran.
    """

    def __init__(self, limit: int, gauge: Gauge | None = None,
                 on_empty: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.held = 0
        if gauge is not None:  # read at each scrape: nothing to update per request
            gauge.set_function(lambda: self.held)
        self._on_empty = on_empty
        self._since_empty = 0
        self._trim_due = False

    def reserve(self, n: int) -> None:
        """Take ``n`` bytes; raise :class:`OverBudget` (taking nothing) when they do not fit."""
        if self.held + n > self.limit:
            raise OverBudget(self.limit)
        self.held += n
        self._since_empty += n

    def release(self, n: int) -> None:
        self.held -= n
        if self.held == 0 and self._since_empty >= TRIM_AFTER_BYTES and not self._trim_due:
            self._trim_due = True
            asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._empty)

    def _empty(self) -> None:
        self._trim_due = False
        if self.held == 0 and self._on_empty is not None:
            self._since_empty = 0
            self._on_empty()


class Reservation:
    """What one request took from a :class:`BodyBudget`; :meth:`close` gives it back."""

    __slots__ = ("_budget", "taken")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, n: int) -> None:
        self._budget.reserve(n)
        self.taken += n

    def close(self) -> None:
        if self.taken:
            self._budget.release(self.taken)
            self.taken = 0


async def read_body(request: web.Request, held: Reservation, max_bytes: int) -> bytes:
    """Read ``request``'s whole body within ``held``'s budget and at most ``max_bytes``.

    Raises :class:`OverBudget` before reading anything when the declared length does not fit
    (for a chunked body: when the next chunk does not), and aiohttp's 413 when the body is
    longer than ``max_bytes``.
    """
    length = request.content_length
    if length is not None:
        if length > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=length)
        held.take(length)
    chunks: list[bytes] = []
    size = 0
    content = request.content
    while chunk := await content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
        if length is None:
            held.take(len(chunk))
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    chunks.clear()
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None:
        body = await decoded(body, encoding, max_bytes, held.take)
    # aiohttp's cache of the body: the handler's request.read() returns it as it is.
    request._read_bytes = body
    return body

