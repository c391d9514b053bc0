"""The completions' HTTP/1.1 client (router.backend_http) against raw loopback servers.

Each backend here is a bare ``asyncio.Protocol`` that records what it was sent and writes the
exact bytes a test gives it, so the test decides the framing, when each piece goes out and
when the connection closes; it also records what the client did to the connection (every
accept, the client's EOF, the server's own write buffer filling up).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
import pytest

from router.backend_http import BackendClient, BadResponse, ConnectError, Response

PATH = "/v1/chat/completions"
WAIT_S = 10.0
"""How long a test waits for something that must happen (never asserted as a speed)."""

T = TypeVar("T")


async def within(aw: Awaitable[T]) -> T:
    """``await aw``, failing (TimeoutError) instead of hanging if it never completes."""
    async with asyncio.timeout(WAIT_S):
        return await aw


class Peer(asyncio.Protocol):
    """The server's end of one accepted connection."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.ended = False
        """The client closed its end (EOF or reset) or the connection is gone."""
        self.write_paused = False
        """The server's write buffer is over its high-water mark (the client is not reading)."""
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.peers.append(self)
        self.backend.changed.set()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._changed.set()

    def eof_received(self) -> bool:
        self.ended = True
        self._changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._changed.set()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._changed.set()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def request(self) -> bytes:
        """The next whole request (head and Content-Length body), taken from what came."""
        def whole() -> bool:
            end = self.data.find(b"\r\n\r\n")
            return end >= 0 and len(self.data) >= end + 4 + _content_length(self.data[:end])
        await self.until(whole)
        end = self.data.find(b"\r\n\r\n") + 4
        end += _content_length(self.data[:end])
        req = bytes(self.data[:end])
        del self.data[:end]
        return req

    async def end(self) -> None:
        """Wait for the client to close the connection."""
        await self.until(lambda: self.ended)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


def _content_length(head: bytes | bytearray) -> int:
    for line in bytes(head).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Backend:
    """A loopback server on a free port; ``peers`` are its accepted connections, in order."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.changed = asyncio.Event()
        self.url = ""
        self.port = 0

    async def accept(self, n: int) -> Peer:
        """The ``n``-th accepted connection (1-based), once it came."""
        async with asyncio.timeout(WAIT_S):
            while len(self.peers) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.peers[n - 1]


StartBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture
async def backend() -> AsyncIterator[StartBackend]:
    """``await backend(host="127.0.0.1")`` serves a :class:`Backend`; all stop at the end."""
    loop = asyncio.get_running_loop()
    servers: list[tuple[asyncio.Server, Backend]] = []

    async def start(host: str = "127.0.0.1") -> Backend:
        b = Backend()
        server = await loop.create_server(lambda: Peer(b), host, 0)
        servers.append((server, b))
        b.port = server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        b.url = f"http://{shown}:{b.port}{PATH}"
        return b

    yield start
    for server, b in servers:
        server.close()
        for peer in b.peers:
            if peer.transport is not None:
                peer.transport.abort()
        await server.wait_closed()
    for _, b in servers:
        for peer in b.peers:
            await peer.end()


@pytest.fixture
async def client() -> AsyncIterator[BackendClient]:
    c = BackendClient(connect_s=5.0, read_s=30.0, keepalive_s=60.0)
    yield c
    c.close()


def _answer(body: bytes = b"ok", *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode() + extra
            + b"\r\n" + body)


async def _answered(client: BackendClient, backend: Backend, answer: bytes,
                    n: int = 1) -> tuple[Peer, Response]:
    """Post, have the ``n``-th connection answer ``answer``; return it and the response,
    whose status line came (the caller closes it)."""
    task = asyncio.create_task(client.post(backend.url, b"{}", []))
    peer = await backend.accept(n)
    await peer.request()
    peer.send(answer)
    return peer, await within(task)


async def _get(client: BackendClient, backend: Backend, answer: bytes,
               n: int) -> tuple[Peer, bytes]:
    """Post, have the ``n``-th connection answer ``answer``; return it and the body read."""
    peer, resp = await _answered(client, backend, answer, n)
    try:
        return peer, await within(resp.read())
    finally:
        resp.close()


async def _read_exactly(resp: Response, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await within(resp.content.readany())
        assert data, f"the body ended after {got!r}"
        got += data
    return got


# --- bodies ---------------------------------------------------------------------------------


async def test_content_length_body(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n"
                                            b"X-Kind: a\r\nX-Kind: b\r\n\r\nhello")
    try:
        assert resp.status == 201
        assert resp.headers.getall("x-kind") == ["a", "b"]
        assert await _read_exactly(resp, 5) == b"hello"
        assert not resp.content.is_eof()
        peer.send(b" world")
        assert await within(resp.read()) == b" world"
        assert resp.content.at_eof() and resp.closed
    finally:
        resp.close()


async def test_read_gives_the_same_body_every_time(backend: StartBackend,
                                                   client: BackendClient) -> None:
    """An error answer is read to classify it, then relayed: the second read is the body."""
    b = await backend()
    _, resp = await _answered(client, b,
                              b'HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\n{"e":1}')
    try:
        assert await within(resp.read()) == b'{"e":1}'
        assert await within(resp.read()) == b'{"e":1}'
    finally:
        resp.close()


async def test_chunked_body_split_across_writes(backend: StartBackend,
                                                client: BackendClient) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")  # chunk cut
    resp = await within(task)
    try:
        assert await _read_exactly(resp, 3) == b"hel"
        peer.send(b"lo\r\n1")  # the rest of the chunk, and half of the next size line
        assert await _read_exactly(resp, 2) == b"lo"
        peer.send(b"0\r\n world, and more\r\n")  # a 0x10-byte chunk
        assert await _read_exactly(resp, 16) == b" world, and more"
        assert not resp.content.is_eof()
        peer.send(b"0\r\n\r\n")
        assert await within(resp.content.readany()) == b""
        assert resp.content.at_eof()
    finally:
        resp.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
], ids=["http11-connection-close", "http10"])
async def test_body_without_length_ends_at_close(backend: StartBackend, client: BackendClient,
                                                 head: bytes) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, head + b"abc")
    try:
        assert await _read_exactly(resp, 3) == b"abc"
        peer.send(b"def")
        assert await _read_exactly(resp, 3) == b"def"
        assert not resp.content.is_eof()  # no length: only the close ends it
        peer.close()
        assert await within(resp.read()) == b""
        assert resp.content.at_eof()
    finally:
        resp.close()
    _, body = await _get(client, b, _answer(b"next"), 2)  # that connection is not reused
    assert body == b"next"


async def test_204_has_no_body(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 204 No Content\r\n\r\n")
    try:
        assert resp.status == 204
        assert resp.content.is_eof()
        assert await within(resp.read()) == b""
    finally:
        resp.close()
    again, body = await _get(client, b, _answer(b"x"), 1)  # kept alive: the same connection
    assert again is peer and body == b"x"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfull\r\n8\r\nhal",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhalf",
], ids=["content-length", "chunked-mid-chunk", "content-length-connection-close"])
async def test_truncated_body_raises(backend: StartBackend, client: BackendClient,
                                     answer: bytes) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, answer)
    try:
        peer.close()
        with pytest.raises(aiohttp.ServerDisconnectedError) as raised:
            await within(resp.read())
        assert isinstance(raised.value, aiohttp.ClientError)
        assert not resp.content.is_eof()
        with pytest.raises(aiohttp.ServerDisconnectedError):  # and so does every read after
            await within(resp.content.readany())
    finally:
        resp.close()


async def test_truncated_body_read_piecewise_never_ends_cleanly(
        backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    try:
        assert await _read_exactly(resp, 4) == b"half"
        peer.close()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await within(resp.content.readany())  # never b"" (the end) for a short body
    finally:
        resp.close()


async def test_close_before_status_line(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    peer.close()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await within(task)


# --- the request on the wire ----------------------------------------------------------------


async def test_request_bytes(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    body = b'{"model":"m","stream":true}'
    headers = [("Content-Type", "application/json"), ("X-Request-Id", "r-1"),
               ("Authorization", "Bearer t"), ("X-Request-Id", "r-2")]
    task = asyncio.create_task(client.post(b.url + "?a=1&b=%20", body, headers))
    peer = await b.accept(1)
    assert await peer.request() == (
        b"POST /v1/chat/completions?a=1&b=%20 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{b.port}\r\n".encode()
        + b"Content-Type: application/json\r\nX-Request-Id: r-1\r\n"
          b"Authorization: Bearer t\r\nX-Request-Id: r-2\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    peer.send(_answer())
    resp = await within(task)
    resp.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not socket.has_ipv6 or not _ipv6_loopback(),
                    reason="no IPv6 loopback (::1) on this machine")
async def test_request_host_ipv6_in_brackets(backend: StartBackend,
                                             client: BackendClient) -> None:
    b = await backend("::1")
    task = asyncio.create_task(client.post(b.url, b"", []))
    peer = await b.accept(1)
    assert await peer.request() == (
        f"POST {PATH} HTTP/1.1\r\nHost: [::1]:{b.port}\r\nContent-Length: 0\r\n\r\n".encode())
    peer.send(_answer())
    resp = await within(task)
    try:
        assert await within(resp.read()) == b"ok"
    finally:
        resp.close()


async def test_an_international_host_name_goes_out_as_idna(client: BackendClient) -> None:
    """The Host header (and the name resolved) is the IDNA form, not the name's UTF-8."""
    target = client._target("http://bücher.example:8000/v1/chat/completions")
    assert target.prefix == ("POST /v1/chat/completions HTTP/1.1\r\n"
                             "Host: xn--bcher-kva.example:8000\r\n")
    assert target.pool.host == "xn--bcher-kva.example"


async def test_header_bytes_pass_through(backend: StartBackend, client: BackendClient) -> None:
    """Request header values go out as the client's bytes (surrogate escapes undone), and the
    answer's are decoded the same way."""
    b = await backend()
    task = asyncio.create_task(client.post(
        b.url, b"", [("X-Latin1", "caf\udce9"), ("X-Utf8", "café")]))
    peer = await b.accept(1)
    req = await peer.request()
    assert b"\r\nX-Latin1: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\n" in req
    peer.send(_answer(extra=b"X-Back: caf\xe9\r\nX-Utf8: caf\xc3\xa9\r\n"))
    resp = await within(task)
    try:
        assert resp.headers["X-Back"] == "caf\udce9"
        assert resp.headers["X-Back"].encode("utf-8", "surrogateescape") == b"caf\xe9"
        assert resp.headers["X-Utf8"] == "café"
    finally:
        resp.close()


# --- keep-alive -----------------------------------------------------------------------------


async def test_sequential_posts_reuse_one_connection(backend: StartBackend,
                                                     client: BackendClient) -> None:
    b = await backend()
    first, body1 = await _get(client, b, _answer(b"one"), 1)
    second, body2 = await _get(client, b, _answer(b"two"), 1)
    assert (body1, body2) == (b"one", b"two")
    assert second is first and len(b.peers) == 1 and not first.ended


async def test_connection_close_answer_gets_a_new_connection(backend: StartBackend,
                                                             client: BackendClient) -> None:
    b = await backend()
    first, _ = await _get(client, b, _answer(b"one", extra=b"Connection: close\r\n"), 1)
    await first.end()  # the client closes it: the backend said it would not keep it
    second, body = await _get(client, b, _answer(b"two"), 2)
    assert second is not first and body == b"two"


async def test_idle_connection_closes_after_keepalive(backend: StartBackend) -> None:
    b = await backend()
    client = BackendClient(connect_s=5.0, read_s=30.0, keepalive_s=0.2)
    try:
        first, _ = await _get(client, b, _answer(), 1)
        await first.end()  # closed by the client, idle for keepalive_s
        second, body = await _get(client, b, _answer(b"again"), 2)
        assert second is not first and body == b"again"
    finally:
        client.close()


async def test_connection_closed_by_server_while_idle_is_not_reused(
        backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    first, _ = await _get(client, b, _answer(), 1)
    first.close()
    await first.end()
    # The FIN is on the client's socket: a few loop turns and the client has seen it.
    for _ in range(10):
        await asyncio.sleep(0.01)
    second, body = await _get(client, b, _answer(b"fresh"), 2)
    assert second is not first and body == b"fresh"


# --- errors ---------------------------------------------------------------------------------


async def test_connection_refused(client: BackendClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(ConnectError) as raised:
        await within(client.post(f"http://127.0.0.1:{port}{PATH}", b"", []))
    assert isinstance(raised.value, aiohttp.ClientOSError)
    assert raised.value.errno == errno.ECONNREFUSED


@contextlib.contextmanager
def _full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full, so a new connect hangs (SYNs dropped)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            s = socket.socket()
            fillers.append(s)
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # this one hangs: the queue is full
        else:
            pytest.skip("the loopback accept queue never filled (backlog 0 not honoured)")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_timeout() -> None:
    client = BackendClient(connect_s=0.3, read_s=30.0, keepalive_s=60.0)
    try:
        with _full_backlog() as port, pytest.raises(aiohttp.ConnectionTimeoutError):
            await within(client.post(f"http://127.0.0.1:{port}{PATH}", b"", []))
    finally:
        client.close()


async def test_read_timeout_before_status_line(backend: StartBackend) -> None:
    b = await backend()
    client = BackendClient(connect_s=5.0, read_s=0.2, keepalive_s=60.0)
    try:
        task = asyncio.create_task(client.post(b.url, b"{}", []))
        peer = await b.accept(1)
        await peer.request()
        with pytest.raises(aiohttp.SocketTimeoutError):
            await within(task)
        await peer.end()  # and the connection is dropped
    finally:
        client.close()


async def test_read_timeout_between_body_chunks(backend: StartBackend) -> None:
    b = await backend()
    client = BackendClient(connect_s=5.0, read_s=0.3, keepalive_s=60.0)
    try:
        task = asyncio.create_task(client.post(b.url, b"{}", []))
        peer = await b.accept(1)
        await peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        resp = await within(task)
        try:
            assert await _read_exactly(resp, 5) == b"hello"
            with pytest.raises(aiohttp.SocketTimeoutError):
                await within(resp.content.readany())
            await peer.end()
        finally:
            resp.close()
    finally:
        client.close()


@pytest.mark.parametrize("answer", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
], ids=["no-status-line", "bad-content-length", "bad-header"])
async def test_garbage_answer(backend: StartBackend, client: BackendClient,
                              answer: bytes) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    peer.send(answer)
    with pytest.raises(BadResponse):
        await within(task)
    await peer.end()


@pytest.mark.parametrize(("count", "ok"), [(60, True), (70, False)],
                         ids=["60-KB-of-headers", "70-KB-of-headers"])
async def test_header_size_limit(backend: StartBackend, client: BackendClient, count: int,
                                 ok: bool) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    extra = b"".join(b"X-H%04d: %s\r\n" % (i, b"v" * 993) for i in range(count))  # 1000 B each
    peer.send(_answer(b"body", extra=extra))
    if ok:
        resp = await within(task)
        try:
            assert len(resp.headers) == count + 1
            assert await within(resp.read()) == b"body"
        finally:
            resp.close()
    else:
        with pytest.raises(BadResponse, match="headers"):
            await within(task)
        await peer.end()


async def test_interim_100_continue(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    peer.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
    peer.send(_answer(b"real", status="200 OK", extra=b"X-Final: 1\r\n"))
    resp = await within(task)
    try:
        assert resp.status == 200
        assert "X-Interim" not in resp.headers and resp.headers["X-Final"] == "1"
        assert await within(resp.read()) == b"real"
    finally:
        resp.close()
    again, body = await _get(client, b, _answer(b"more"), 1)  # and it stays usable
    assert again is peer and body == b"more"


# --- cancel and close -----------------------------------------------------------------------


async def test_cancel_waiting_for_status_line_drops_connection(
        backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    peer = await b.accept(1)
    await peer.request()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    await peer.end()  # the backend sees the request end (read_s is 30 s: not a timeout)
    second, _ = await _get(client, b, _answer(), 2)
    assert second is not peer


async def test_response_close_before_end_drops_connection(backend: StartBackend,
                                                          client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    assert await _read_exactly(resp, 4) == b"part"
    resp.close()
    assert resp.closed
    await peer.end()
    second, body = await _get(client, b, _answer(b"new"), 2)
    assert second is not peer and body == b"new"


async def test_response_close_after_end_keeps_connection(backend: StartBackend,
                                                         client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, _answer(b"whole"))
    assert await within(resp.read()) == b"whole"
    resp.close()
    resp.release()  # twice is harmless
    again, body = await _get(client, b, _answer(b"reused"), 1)
    assert again is peer and not peer.ended and body == b"reused"


# --- backpressure ---------------------------------------------------------------------------


async def test_backpressure_pauses_the_backend(backend: StartBackend) -> None:
    b = await backend()
    read_s = 0.3
    client = BackendClient(connect_s=5.0, read_s=read_s, keepalive_s=60.0)
    total = 32 * 1024 * 1024  # far more than the kernel's socket buffers hold unread
    piece = bytes(range(256)) * 256  # 64 KiB
    try:
        task = asyncio.create_task(client.post(b.url, b"{}", []))
        peer = await b.accept(1)
        await peer.request()
        assert peer.transport is not None
        peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for _ in range(total // len(piece)):
            peer.send(piece)
        resp = await within(task)
        try:
            # The test reads nothing for longer than read_s: the client stops reading, the
            # server's buffer stays full, and no read timeout fires.
            await peer.until(lambda: peer.write_paused)
            await asyncio.sleep(3 * read_s)
            assert peer.write_paused and peer.transport.get_write_buffer_size() > 0
            assert not peer.ended
            first = resp.content.read_nowait()
            assert 0 < len(first) <= 2 * 1024 * 1024  # what was buffered when it paused
            got = len(first)
            checksum = first[: len(first) - len(first) % len(piece)]
            assert checksum == piece * (len(checksum) // len(piece))
            while data := await within(resp.content.readany()):
                got += len(data)
            assert got == total and resp.content.at_eof()
            await peer.until(lambda: peer.transport is not None
                             and peer.transport.get_write_buffer_size() == 0)
            assert not peer.write_paused
        finally:
            resp.close()
        again, body = await _get(client, b, _answer(b"after"), 1)  # kept alive
        assert again is peer and body == b"after"
    finally:
        client.close()


# --- Body -----------------------------------------------------------------------------------


async def test_body_eof_and_read_nowait(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    body = resp.content
    try:
        assert await _read_exactly(resp, 3) == b"abc"
        assert body.read_nowait() == b""  # nothing unread yet
        assert not body.is_eof() and not body.at_eof() and not resp.closed
        peer.send(b"def")
        assert await within(body.readany()) == b"def"
        assert body.is_eof() and body.at_eof()
        assert body.read_nowait() == b"" and await within(body.readany()) == b""
        assert await within(body.read()) == b""
    finally:
        resp.close()
    # An answer whose head and body come in one write: ended on arrival, not yet read.
    task = asyncio.create_task(client.post(b.url, b"{}", []))
    await peer.request()
    peer.send(_answer(b"whole"))
    resp = await within(task)
    body = resp.content
    try:
        assert body.is_eof() and not body.at_eof() and resp.closed
        assert body.read_nowait() == b"whole"
        assert body.at_eof() and body.read_nowait() == b""
    finally:
        resp.close()


async def test_body_set_exception(backend: StartBackend, client: BackendClient) -> None:
    b = await backend()
    peer, resp = await _answered(client, b, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    body = resp.content
    try:
        assert await _read_exactly(resp, 3) == b"abc"
        waiting = asyncio.create_task(body.readany())
        await asyncio.sleep(0)
        assert not waiting.done()
        body.set_exception(ValueError("stop"))
        with pytest.raises(ValueError, match="stop"):
            await within(waiting)  # a waiting read wakes and raises
        with pytest.raises(ValueError, match="stop"):
            await within(body.readany())
        with pytest.raises(ValueError, match="stop"):
            body.read_nowait()
        with pytest.raises(ValueError, match="stop"):
            await within(body.read())
    finally:
        resp.close()
    await peer.end()
