"""How fast the router takes in large request bodies: ``server.large_body_bytes_per_s``.

Reading, decoding and parsing a body costs CPU in proportion to its size (~7 ms of the router's
core per MB, most of it in C calls that hold the interpreter lock), and one router process is one
core. A client that sends 4 MB prompts back to back, each answered at once, would otherwise take
as much of that core as it likes, and every other stream would pay in time to first token. So
bodies of :data:`LARGE_BODY_BYTES` or more draw on a bucket of bytes, refilled at
``large_body_bytes_per_s`` and holding at most ``max(rate, max_body_bytes)`` (a burst of one
body of the largest size is always possible). A large body declared by ``Content-Length``
reserves its bytes before it is read; when the bucket does not hold them yet, its reading waits
until it would (a leaky bucket, as nginx's ``limit_req`` delays within its burst): meanwhile the
body stays in the kernel's buffers and TCP holds the sender back, which costs the router
nothing. A wait longer than :data:`MAX_WAIT_S` is not taken: 503 ``large_body_rate_exceeded``
with the honest ``Retry-After`` (sent again then, it waits at most that long), body unread. A
chunked body is charged once read. Small bodies (ordinary prompts up to ~128k tokens of text)
never touch it.
"""

from __future__ import annotations

from collections.abc import Callable

from lpu_protocol.openai_api import APIError

__all__ = ["LARGE_BODY_BYTES", "MAX_WAIT_S", "LargeBodyRate"]

LARGE_BODY_BYTES = 512 * 1024
"""A body at least this large is a large body: it draws on the rate, and is parsed off the
event loop (``router.handlers``)."""
MAX_WAIT_S = 1.0
"""Longest a large body waits for the rate before it is read; beyond it, 503."""


class LargeBodyRate:
    """A token bucket of body bytes; ``clock`` in seconds."""

    def __init__(self, bytes_per_s: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = bytes_per_s
        self.burst = max(burst, bytes_per_s)
        self._clock = clock
        self._level = self.burst
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level

    def reserve(self, n: int) -> float:
        """Reserve ``n`` bytes; the seconds to wait before reading them (0: at once). A wait
        over :data:`MAX_WAIT_S` reserves nothing and is returned as it is."""
        level = self._refill()
        wait = max(0.0, (n - level) / self.rate)
        if wait <= MAX_WAIT_S:
            self._level = level - n
        return wait

    def charge(self, n: int) -> None:
        """``n`` bytes already read (a chunked body): taken even into debt."""
        self._level = self._refill() - n

    def error(self) -> APIError:
        return APIError(503, f"The router takes in large request bodies (of {LARGE_BODY_BYTES}"
                        f" bytes or more) at {self.rate:.0f} bytes/s at most"
                        f" (server.large_body_bytes_per_s), and this one would wait more than"
                        f" {MAX_WAIT_S:g} s; retry after the time given.",
                        type="server_error", code="large_body_rate_exceeded")
