"""The completions' HTTP/1.1 client: keep-alive connections to each backend, answers parsed by
httptools (llhttp), and nothing more than the relay needs.

aiohttp's ``ClientSession`` is a general client: per request it builds a ``ClientRequest``
(cookies, auth, proxies, auto headers, a payload object), runs a connector with traces and
timers, and a ``ClientResponse`` with its own stream reader. On the development machine that
is ~85 us of CPU per request against the canned upstream, where a keep-alive connection that
writes the request in one call and feeds the answer to llhttp takes ~16 us (the same machine,
8 in flight, 20000 requests each; docs/router.md "What the proxy costs"). The router sends one
kind of request, a POST of a JSON body it built itself, so it needs none of that generality on
its request path; probes, ``/load`` polls and rollouts keep the aiohttp session.

Contract (what :mod:`router.relay` relies on, each the same as with aiohttp's client):

* :meth:`BackendClient.post` returns once the status line and headers came. Failures raise
  aiohttp's exception types, so :func:`router.errors.map_client_error` is the one place that
  classifies them: :class:`ConnectError` (an ``aiohttp.ClientOSError``: refused, unreachable),
  ``aiohttp.ConnectionTimeoutError`` (``connect_s``), ``aiohttp.SocketTimeoutError``
  (``read_s`` without a byte, waiting for the status line or between reads of the body),
  ``aiohttp.ServerDisconnectedError`` (closed before the answer ended) and
  :class:`BadResponse` (an answer llhttp rejects).
* A cancel while waiting for the status line drops the connection: the backend sees the
  request end.
* :class:`Body` is the reader: ``read_nowait``, ``readany``, ``read``, ``at_eof``,
  ``is_eof``, ``set_exception``. More than ``_HIGH`` unread bytes pause reading from the
  backend until the relay takes them, so a slow client slows the backend (backpressure); the
  read timeout does not run while paused, as a paused read is the client's doing.
* A connection goes back to its pool when the answer ended and the backend keeps it alive;
  :meth:`Response.close` before the end drops it. Idle connections close after
  ``keepalive_s`` (shorter than the backends' own, so the router is the one that closes).

Header names and values are sent as the client's bytes (``surrogateescape``, as aiohttp's
server decoded them) and the answer's are decoded the same way; aiohttp's request parser has
already refused any CR or LF inside a value, so a forwarded header cannot split the request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["BackendClient", "BadResponse", "Body", "ConnectError", "Response"]

_HIGH = 256 * 1024
"""Unread bytes of an answer at which reading from the backend pauses."""
_MAX_HEAD = 64 * 1024
"""Bytes of header names and values an answer may have (aiohttp's client: 8190 per line)."""


class ConnectError(aiohttp.ClientOSError):
    """The connection to the backend could not be made (refused, unreachable, TLS)."""


class BadResponse(aiohttp.ClientError):
    """The backend's answer is not HTTP/1.x that llhttp accepts."""


class Body:
    """The answer's body as it arrives: the subset of aiohttp's ``StreamReader`` the relay
    uses (see the module docstring)."""

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_size", "_waiter")

    def __init__(self, conn: _Connection) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._conn = conn

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        """The next read (and every one after) raises ``exc``."""
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def is_eof(self) -> bool:
        """The backend sent the whole body (some may be unread)."""
        return self._eof

    def at_eof(self) -> bool:
        """The whole body came and has been read."""
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes:
        """What has come and is unread (``b""``: nothing yet)."""
        if self._exc is not None:
            raise self._exc
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if not self._eof:  # once ended, the connection may be serving another answer
            self._conn.resume()
        return data

    async def readany(self) -> bytes:
        """What has come and is unread, waiting for some; ``b""`` once the body ended."""
        while not self._chunks and not self._eof and self._exc is None:
            self._waiter = self._conn.loop.create_future()
            await self._waiter
        return self.read_nowait()

    async def read(self) -> bytes:
        """The whole body, once it ended."""
        while not self._eof and self._exc is None:
            self._waiter = self._conn.loop.create_future()
            await self._waiter
        return self.read_nowait()


class Response:
    """A backend's answer whose status line and headers came."""

    __slots__ = ("_body", "_conn", "content", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], content: Body,
                 conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._conn: _Connection | None = conn
        self._body: bytes | None = None

    @property
    def closed(self) -> bool:
        """The answer ended or was dropped: its connection is no longer this answer's."""
        return self._conn is None or self.content.is_eof()

    async def read(self) -> bytes:
        """The whole body, once it ended; the same bytes however often it is called (an
        error answer is read to classify it, then relayed)."""
        if self._body is None:
            self._body = await self.content.read()
        return self._body

    def release(self) -> None:
        """Done with the answer: as :meth:`close` (a connection whose answer ended is already
        back in its pool)."""
        self.close()

    def close(self) -> None:
        """Done with the answer: drop the connection if the body has not ended."""
        conn, self._conn = self._conn, None
        if conn is not None and not self.content.is_eof():
            conn.drop()


class _Connection(asyncio.Protocol):
    """One connection to a backend, one request at a time (no pipelining)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self._head: asyncio.Future[Response] | None = None
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._until_eof = False
        self._body: Body | None = None
        self._paused = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_s = pool.read_s

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            why = (f"more than {_MAX_HEAD} bytes of headers" if self._head_bytes > _MAX_HEAD
                   else str(exc))
            self._fail(BadResponse(f"The backend's answer is not valid HTTP: {why}"))
            self.drop()

    def eof_received(self) -> bool:
        return False  # close our half too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_timer()
        self.pool.forget(self)
        body = self._body
        if body is not None and not body.is_eof() and self._until_eof:
            body._end()  # a body without length or chunks ends with the connection
            self._body = None
            return
        self._fail(aiohttp.ServerDisconnectedError(
            "The backend closed the connection before its answer ended"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD:
            raise BadResponse("headers too large")  # feed_data raises it as a parser error
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._raw, self._head_bytes = [], 0
            return
        head = self._head
        headers: CIMultiDict[str] = CIMultiDict([
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw])
        self._raw, self._head_bytes = [], 0
        # Neither a length nor chunks: the body is what comes until the backend closes.
        self._until_eof = "Content-Length" not in headers and "Transfer-Encoding" not in headers
        self._body = body = Body(self)
        if head is None or head.done():  # an answer nobody asked for
            self._fail(BadResponse("The backend answered a request it was not sent"))
            self.drop()
            return
        self._head = None
        head.set_result(Response(status, CIMultiDictProxy(headers), body, self))

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body._feed(data)

    def on_message_complete(self) -> None:
        body = self._body
        if body is None:  # the interim answer's end
            return
        self._body = None
        self._stop_timer()
        body._end()
        if self.parser.should_keep_alive() and self.transport is not None:
            self.resume()
            self.pool.put(self)
        else:
            self.drop()

    # used by Body, Response and the pool

    def send(self, head: bytes, body: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self._head is None
        self._head = fut = self.loop.create_future()
        self._last_read = now = self.loop.time()
        self._timer = self.loop.call_at(now + self._read_s, self._check_read)
        self.transport.write(head + body)
        return fut

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._last_read = self.loop.time()
            if self.transport is not None:
                self.transport.resume_reading()

    def drop(self) -> None:
        """Close at once (the backend sees the request end); the answer, if any, fails."""
        if self.transport is not None:
            self.transport.abort()

    def _check_read(self) -> None:
        """The read timeout's one timer: it fires ``read_s`` after the last read (or, while
        reading is paused for the client, checks again ``read_s`` later)."""
        self._timer = None
        if self._head is None and self._body is None:
            return
        now = self.loop.time()
        due = now + self._read_s if self._paused else self._last_read + self._read_s
        if due > now:
            self._timer = self.loop.call_at(due, self._check_read)
            return
        self._fail(aiohttp.SocketTimeoutError(
            f"The backend sent nothing for {self._read_s:g} s"))
        self.drop()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        body, self._body = self._body, None
        if body is not None and not body.is_eof():
            body.set_exception(exc)


class _Pool:
    """The idle keep-alive connections to one backend (scheme, host, port), newest last."""

    def __init__(self, client: BackendClient, host: str, port: int,
                 tls: ssl.SSLContext | None) -> None:
        self.loop = client.loop
        self._client = client
        self.read_s = client.read_s
        self.host, self.port, self.tls = host, port, tls
        self._idle: deque[_Connection] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    def take(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def put(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_at(conn.idle_since + self._client.keepalive_s,
                                            self._close_idle)

    def forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def _close_idle(self) -> None:
        """Close the connections idle for ``keepalive_s``; come back for the next one."""
        self._sweep = None
        limit = self.loop.time() - self._client.keepalive_s
        while self._idle and self._idle[0].idle_since <= limit:
            self._idle.popleft().drop()
        if self._idle:
            self._sweep = self.loop.call_at(self._idle[0].idle_since + self._client.keepalive_s,
                                            self._close_idle)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop().drop()


class _Target:
    """A backend URL, parsed once: its pool and the request's first lines."""

    __slots__ = ("pool", "prefix")

    def __init__(self, pool: _Pool, prefix: str) -> None:
        self.pool, self.prefix = pool, prefix


class BackendClient:
    """POSTs to backends over pooled keep-alive connections (see the module docstring).

    Made inside the running loop; :meth:`close` closes the idle connections.
    """

    def __init__(self, *, connect_s: float, read_s: float, keepalive_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_s, self.read_s, self.keepalive_s = connect_s, read_s, keepalive_s
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            u = URL(url)
            if u.scheme not in ("http", "https") or not u.host or u.port is None:
                raise ValueError(f"not an http(s) URL: {url!r}")
            tls = None
            if u.scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                tls = self._tls
            raw = u.raw_host or u.host  # IDNA (punycode), as DNS and the Host header want it
            key = (u.scheme, raw, u.port)
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(self, raw, u.port, tls)
            host = f"[{raw}]" if ":" in raw else raw
            if not u.is_default_port():
                host = f"{host}:{u.port}"
            target = self._targets[url] = _Target(
                pool, f"POST {u.raw_path_qs} HTTP/1.1\r\nHost: {host}\r\n")
        return target

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]
                   ) -> Response:
        """POST ``body`` with ``headers`` (no ``Host`` nor ``Content-Length``: this sets
        them) to ``url``; return once the answer's status line and headers came."""
        target = self._target(url)
        head = (target.prefix + "".join([f"{k}: {v}\r\n" for k, v in headers])
                + f"Content-Length: {len(body)}\r\n\r\n").encode("utf-8", "surrogateescape")
        conn = target.pool.take()
        if conn is None:
            conn = await self._connect(target.pool)
        waiting = conn.send(head, body)
        try:
            return await waiting
        except asyncio.CancelledError:
            conn.drop()
            raise

    async def _connect(self, pool: _Pool) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(pool), pool.host, pool.port, ssl=pool.tls)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"Connecting to {pool.host}:{pool.port} took more than {self.connect_s:g} s"
            ) from None
        except OSError as exc:  # refused, unreachable, a TLS handshake that failed
            raise ConnectError(exc.errno or 0, f"Cannot connect to {pool.host}:{pool.port}:"
                                               f" {exc.strerror or exc}") from exc
        return conn

    def close(self) -> None:
        """Close every idle connection (those relaying an answer close when it ends)."""
        for pool in self._pools.values():
            pool.close()
