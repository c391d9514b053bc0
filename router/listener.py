"""The router's listening socket: connection cap, header limits, idle timeout, JSON errors.

aiohttp answers malformed HTTP itself, before any middleware runs, with a ``text/plain`` body;
and it has no cap on open connections. :class:`GuardedSite` is a ``TCPSite`` that creates the
connection handlers itself, so that:

* at most ``server.max_connections`` client connections are open; one more is answered at
  once with 503 (an OpenAI-shaped JSON error, ``code: "too_many_connections"``) and closed,
  without reading its request;
* a request line or a header field longer than ``server.max_header_bytes``, or more than
  :data:`MAX_HEADERS` header fields, is 431
  (``request_header_fields_too_large``), any other malformed request (conflicting
  ``Content-Length`` and ``Transfer-Encoding``, bad chunking, a non-HTTP byte stream) is 400
  ``bad_request``; every one in OpenAI's error shape, and the connection is closed;
* a connection is closed after ``server.idle_timeout_s`` without a request (aiohttp's
  keep-alive timer, which also runs from the moment a connection opens, so a client that opens
  a connection and sends nothing, or its headers byte by byte, is dropped then).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from router.config import ServerConfig
from router.openai_api import APIError

__all__ = ["LINGER_S", "MAX_HEADERS", "GuardedSite", "handler_kwargs"]

log = logging.getLogger("lpu_router.listener")

MAX_HEADERS = 128
"""Header fields per request, at most (aiohttp's default)."""
LINGER_S = 2.0
"""Seconds an early answer waits for the rest of an unread body before closing."""


def handler_kwargs(server: ServerConfig) -> dict[str, Any]:
    """The aiohttp connection-handler settings that enforce ``server``'s limits."""
    return {
        "keepalive_timeout": server.idle_timeout_s,
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": MAX_HEADERS,
        # After an early answer (408, 413) the unread body is drained for this long before
        # the close, so the client reads the answer instead of a reset (aiohttp: 10 s).
        "lingering_time": LINGER_S,
        "access_log": None,
    }


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


class _Handler(RequestHandler):
    """aiohttp's connection handler, answering protocol errors in OpenAI's error shape."""

    limit = 8190

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
    """A connection over the cap: answer 503, then close once the client is done sending."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(_BUSY_RESPONSE)
        transport.write_eof()
        # Closing with unread input would reset the connection before the client reads the
        # 503; give it a moment to finish sending.
        self._timer = asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        """Discard the request."""

    def eof_received(self) -> bool | None:
        self._timer.cancel()
        self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class GuardedSite(web.BaseSite):
    """A TCP site for an :class:`aiohttp.web.AppRunner`, enforcing ``server``'s limits.

    ``reuse_port``: bind with ``SO_REUSEPORT`` so that a reload can start the next app on the
    same port before this one stops listening.
    """

    def __init__(self, runner: web.AppRunner, server: ServerConfig, host: str, port: int, *,
                 reuse_port: bool = False, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._config = server
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._bound: int | None = None
        self.refused = 0
        """Connections refused for being over ``max_connections``."""

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._bound if self._bound is not None else self._port

    def _protocol(self) -> asyncio.Protocol:
        manager = self._runner.server
        assert manager is not None
        if len(manager.connections) >= self._config.max_connections:
            self.refused += 1
            log.warning("refused a connection: %d open (server.max_connections)",
                        len(manager.connections))
            return _Refuse()
        handler = _Handler(manager, loop=asyncio.get_running_loop(),
                           **handler_kwargs(self._config))
        handler.limit = self._config.max_header_bytes
        return handler

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        self._server = server
        self._bound = int(server.sockets[0].getsockname()[1]) if server.sockets else self._port
