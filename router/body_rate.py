"""How fast the router takes in large request bodies: ``server.large_body_bytes_per_s``.

Reading, decoding and parsing a body costs CPU in proportion to its size (~7 ms of the router's
core per MB, most of it in C calls that hold the interpreter lock), and one router process is one
core. A client that sends 4 MB prompts back to back, each answered at once, would otherwise take
as much of that core as it likes, and every other stream would pay in time to first token. So
bodies of :data:`LARGE_BODY_BYTES` or more draw on a token bucket of bytes, refilled at
``large_body_bytes_per_s`` and holding at most ``max(rate, max_body_bytes)`` (a burst of one
body of the largest size is always possible). A large body declared by ``Content-Length`` that
does not fit is refused before it is read: 503 ``large_body_rate_exceeded`` with the honest
``Retry-After`` (when the bucket will hold it). A chunked body is charged once read: the bucket
may go into debt, and the next large bodies wait for it. Small bodies (ordinary prompts up to
~128k tokens of text) never touch it.
"""

from __future__ import annotations

from collections.abc import Callable

from router.openai_api import APIError

__all__ = ["LARGE_BODY_BYTES", "LargeBodyRate"]

LARGE_BODY_BYTES = 512 * 1024
"""A body at least this large is a large body: it draws on the rate, and is parsed off the
event loop (``router.handlers``)."""


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

    def take(self, n: int) -> float | None:
        """Take ``n`` bytes now: None when they fit, else the seconds until they would."""
        level = self._refill()
        if n <= level:
            self._level = level - n
            return None
        return (n - level) / self.rate

    def charge(self, n: int) -> None:
        """``n`` bytes already read (a chunked body): taken even into debt."""
        self._level = self._refill() - n

    def error(self) -> APIError:
        return APIError(503, f"The router takes in large request bodies (of {LARGE_BODY_BYTES}"
                        f" bytes or more) at {self.rate:.0f} bytes/s at most"
                        " (server.large_body_bytes_per_s); retry after the time given.",
                        type="server_error", code="large_body_rate_exceeded")
