"""The router's listening socket: connection cap, header limits, idle timeout, JSON errors.

aiohttp answers malformed HTTP itself, before any middleware runs, with a ``text/plain`` body;
and it has no cap on open connections. :class:`GuardedSite` is a ``TCPSite`` that creates the
connection handlers itself, so that:

* at most ``cap`` client connections are open (``server.max_connections``, lowered at start
  to what the process's file-descriptor limit allows, :func:`router.process.connection_cap`);
  one more is answered at once with 503 (an OpenAI-shaped JSON error,
  ``code: "too_many_connections"``) and closed, without reading its request. Each refusal is
  counted (``on_refused``: ``lpu_router_connections_refused_total``) and logged at most once
  per :data:`REFUSAL_LOG_EVERY_S` (a flood of refusals must not become a flood of log lines);
* a request line or a header field longer than ``server.max_header_bytes``, or more than
  :data:`MAX_HEADERS` header fields, is 431
  (``request_header_fields_too_large``), any other malformed request (conflicting
  ``Content-Length`` and ``Transfer-Encoding``, bad chunking, a non-HTTP byte stream) is 400
  ``bad_request``; every one in OpenAI's error shape, and the connection is closed;
* a connection is closed after ``server.idle_timeout_s`` without a request (aiohttp's
  keep-alive timer, which also runs from the moment a connection opens, so a client that opens
  a connection and sends nothing, or its headers byte by byte, is dropped then);
* a client that half-closes (``shutdown(SHUT_WR)``) after sending a whole request still gets
  its answer (then the connection closes). A FIN alone cannot tell a half-close from a client
  that closed entirely, so while the answer has not started the router probes HTTP/1.1 peers
  with interim ``100 Continue`` responses (every HTTP/1.1 client must accept unexpected 1xx,
  RFC 9110 15.2): a peer that is gone answers the first with a reset, the next write fails and
  the handler is cancelled as for any client that leaves. A FIN on an idle connection, or in
  the middle of a body, closes the connection as before.

The listening socket may be given (``sock``): a reload hands the same socket to the next
generation, so no connection waiting in its accept queue is lost (two sockets bound with
``SO_REUSEPORT`` each have their own queue, and closing one resets what waits in it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from lpu_protocol.openai_api import APIError
from router.config import ServerConfig

__all__ = [
    "LINGER_S",
    "MAX_HEADERS",
    "REFUSAL_LOG_EVERY_S",
    "GuardedSite",
    "handler_kwargs",
    "listen_backlog",
]

log = logging.getLogger("lpu_router.listener")

MAX_HEADERS = 128
"""Header fields per request, at most (aiohttp's default)."""
LINGER_S = 2.0
"""Seconds an early answer waits for the rest of an unread body before closing."""
REFUSAL_LOG_EVERY_S = 10.0
"""At most one log line per this many seconds about connections refused over the cap."""
_PROBE_FIRST_S = 0.05
_PROBE_MAX_S = 2.0
"""Interval of the half-close probes: from the first to at most this, doubling."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REFUSED_LINGER_S = 1.0
_QUIET_S = 0.05
"""A refused connection closes this long after the client's last byte."""


def handler_kwargs(server: ServerConfig) -> dict[str, Any]:
    """The aiohttp connection-handler settings that enforce ``server``'s limits."""
    return {
        "keepalive_timeout": server.idle_timeout_s,
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": MAX_HEADERS,
        # Bodies are decoded by the router, within its limits (router.body_encoding): aiohttp
        # would inflate a whole gzip body in one loop callback.
        "auto_decompress": False,
        # After an early answer (408, 413) the unread body is drained for this long before
        # the close, so the client reads the answer instead of a reset (aiohttp: 10 s).
        "lingering_time": LINGER_S,
        "access_log": None,
    }


def listen_backlog(cap: int) -> int:
    """The accept queue's length for a connection cap of ``cap``: a burst of a whole cap of
    connections waits in it rather than being dropped (the kernel clamps it to
    ``net.core.somaxconn``)."""
    return max(128, min(cap, 65535))


def protocol_error(status: int, exc: BaseException | None, limit: int) -> APIError:
    """The OpenAI-shaped error for an HTTP message aiohttp could not parse."""
    text = str(exc) if exc is not None else ""
    if isinstance(exc, LineTooLong) or "Too many headers" in text or "too long" in text.lower():
        return APIError(431, f"Request header fields too large: the limit is {limit} bytes per"
                        f" field and {MAX_HEADERS} fields.",
                        code="request_header_fields_too_large")
    if isinstance(exc, BadHttpMessage) or 400 <= status < 500:
        detail = getattr(exc, "message", "") or text or "malformed request"
        return APIError(400, f"Malformed HTTP request: {detail}", code="bad_request")
    return APIError(500, "The router failed to handle the request.", type="server_error",
                    code="internal_error")


class _Open:
    """How many client connections a site has open (kept by the handlers themselves: asking
    aiohttp's manager builds a list per call)."""

    __slots__ = ("n", "none")

    def __init__(self) -> None:
        self.n = 0
        self.none = asyncio.Event()
        self.none.set()

    def opened(self) -> None:
        self.n += 1
        self.none.clear()

    def closed(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.none.set()


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering protocol errors in OpenAI's error shape and
    serving clients that half-close."""

    limit = 8190

    def __init__(self, *args: Any, open_count: _Open, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open_count = open_count
        self._counted = False
        self._probe: asyncio.Handle | None = None
        self._probe_every = _PROBE_FIRST_S
        self._last: tuple[Any, StreamReader] | None = None
        """The last request parsed on this connection: (message, payload)."""
        self._received = 0
        self._answered = 0
        self._sending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._open_count.opened()
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._open_count.closed()
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        super().connection_lost(exc)

    # asyncio's Protocol returns bool | None here (True: keep the transport open); aiohttp's
    # annotation narrows it to None.
    def eof_received(self) -> bool:  # type: ignore[override]
        """Keep a half-closed connection open while its whole request waits for its answer."""
        version = self._answer_pending()
        if version is None:
            return False  # idle or mid-body: the transport closes, as aiohttp does
        self.close()  # nothing can follow a half-close: close once this answer is out
        if version != HttpVersion10:  # HTTP/1.0 clients must get no 1xx (RFC 9110 15.2)
            self._probe = self._loop.call_soon(self._probe_peer)
        return True

    def data_received(self, data: bytes) -> None:
        before = len(self._messages)
        super().data_received(data)
        if len(self._messages) > before:
            self._received += len(self._messages) - before
            self._last = self._messages[-1]

    async def finish_response(self, request: Any, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        self._sending = True  # from here on the answer's own bytes go out: no more probes
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._sending = False
            self._answered += 1

    def _answer_pending(self) -> HttpVersion | None:
        """The HTTP version of the last request received when its body came whole and its
        answer is still to come; None otherwise (idle, or the body is incomplete)."""
        if self._last is None or self._answered >= self._received:
            return None
        message, payload = self._last
        if not payload.is_eof():
            return None
        version: HttpVersion | None = getattr(message, "version", None)
        return version

    def _probe_peer(self) -> None:
        """One interim response, while the final one has not started (see the module doc)."""
        self._probe = None
        transport = self.transport
        request = self._current_request
        if transport is None or transport.is_closing() or self._sending:
            return
        if request is not None and request.writer.output_size > 0:
            return  # the answer started: its own writes now tell whether the peer is gone
        if self._answer_pending() is None:
            return
        transport.write(_CONTINUE)
        self._probe = self._loop.call_later(self._probe_every, self._probe_peer)
        self._probe_every = min(self._probe_every * 2, _PROBE_MAX_S)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        err = protocol_error(status, exc, self.limit)
        log.debug("refused a malformed request: %s", exc)
        resp = web.Response(status=err.status, body=err.to_json(),
                            content_type="application/json")
        resp.force_close()
        return resp


_BUSY = APIError(503, "Too many open connections to the router; retry shortly.",
                 type="server_error", code="too_many_connections")
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
    + str(len(_BUSY.to_json())).encode() + b"\r\n\r\n" + _BUSY.to_json()
)


class _Refuse(asyncio.Protocol):
    """A connection over the cap: answer 503, then close once the client is done sending.

    Closing with unread input would reset the connection before the client reads the 503, so
    the connection lingers: until the client's EOF, or :data:`_QUIET_S` after its last byte,
    or :data:`_REFUSED_LINGER_S` for a client that sends nothing. Refusals are themselves
    bounded, since each holds a descriptor: beyond ``cap`` of them lingering at once (a flood
    of more than twice the cap within a second), a refused connection is closed as soon as
    its 503 is written; a client that had already sent its request may then see a reset.
    """

    def __init__(self, lingering: _Open, cap: int) -> None:
        self._lingering = lingering
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any stream transport (asyncio's or uvloop's, which is no asyncio.Transport subclass).
        t = cast(asyncio.Transport, transport)
        self._transport = t
        self._lingering.opened()
        t.write(_BUSY_RESPONSE)
        t.write_eof()
        loop = asyncio.get_running_loop()
        self._lingers = self._lingering.n <= self._cap  # else: no descriptors to linger with
        self._timer: asyncio.Handle = loop.call_later(
            _REFUSED_LINGER_S if self._lingers else 0.0, t.close)

    def data_received(self, data: bytes) -> None:
        """Discard the request; close soon after it stops coming."""
        if self._lingers:  # close once it is quiet
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(_QUIET_S, self._transport.close)

    def eof_received(self) -> bool | None:
        self._timer.cancel()
        self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._lingering.closed()


class _RefusalLog:
    """One warning per :data:`REFUSAL_LOG_EVERY_S` at most, with the count since the last."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._unlogged = 0
        self._next = 0.0

    def refused(self, now: float) -> None:
        self._unlogged += 1
        if now < self._next:
            return
        log.warning("refused %d connection(s) over the cap of %d open (server.max_connections)",
                    self._unlogged, self._cap)
        self._unlogged = 0
        self._next = now + REFUSAL_LOG_EVERY_S


class GuardedSite(web.BaseSite):
    """A TCP site for an :class:`aiohttp.web.AppRunner`, enforcing ``server``'s limits.

    ``cap``: open connections at most (default ``server.max_connections``). ``sock``: listen
    on this bound socket (the site uses a duplicate of it, so closing the site leaves ``sock``
    and its accept queue to the next generation); else bind ``host:port``. ``on_refused``:
    called once per connection refused over the cap.
    """

    def __init__(self, runner: web.AppRunner, server: ServerConfig, host: str, port: int, *,
                 cap: int | None = None, sock: socket.socket | None = None,
                 on_refused: Callable[[], None] | None = None) -> None:
        self._cap = server.max_connections if cap is None else cap
        super().__init__(runner, backlog=listen_backlog(self._cap))
        self._config = server
        self._host = host
        self._port = port
        self._sock = sock
        self._on_refused = on_refused
        self._bound: int | None = None
        self._open = _Open()
        self._refusing = _Open()
        self._refusals = _RefusalLog(self._cap)
        self.refused = 0
        """Connections refused for being over the cap."""

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._bound if self._bound is not None else self._port

    @property
    def open_connections(self) -> int:
        """Client connections open now (refused ones not counted)."""
        return self._open.n

    async def connections_closed(self) -> None:
        """Return once no client connection is open."""
        await self._open.none.wait()

    def _protocol(self) -> asyncio.Protocol:
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        if self._open.n >= self._cap:
            self.refused += 1
            if self._on_refused is not None:
                self._on_refused()
            self._refusals.refused(loop.time())
            return _Refuse(self._refusing, self._cap)
        handler = _Handler(manager, loop=loop, open_count=self._open,
                           **handler_kwargs(self._config))
        handler.limit = self._config.max_header_bytes
        return handler

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            server = await loop.create_server(self._protocol, sock=self._sock.dup(),
                                              backlog=self._backlog)
        else:
            server = await loop.create_server(self._protocol, self._host, self._port,
                                              backlog=self._backlog)
        self._server = server
        self._bound = int(server.sockets[0].getsockname()[1]) if server.sockets else self._port
