"""One load process of the emulator fidelity benchmark (``python -m benchmarks.fidelity_client``).

It keeps ``--streams`` streaming requests in flight (closed loop: each worker sends its next
request when one ends), worker ``i`` on ``urls[(offset + i) % len(urls)]``, and records when
every token arrived. The benchmark starts several of these, so the load generator has
processes of its own and the emulator's figures are not the client's.

Protocol with the benchmark: the process prints ``ready`` once its session exists, then waits
for the file ``--go`` to appear; it holds one line, ``BEGIN MEASURE_FROM MEASURE_TO`` in
``time.monotonic()`` seconds (CLOCK_MONOTONIC is one clock for every process on the machine).
Streams start at BEGIN; tokens arriving in ``[MEASURE_FROM, MEASURE_TO)`` are measured; no
request starts at or after MEASURE_TO, and every started request is read to its end. Then it
writes ``--out`` (JSON: totals) and ``--out`` + ``.npy`` (float32 ms, two rows: lateness of
every measured token, and 1 where the token was a first token, else 0) and exits 0.

A token ``k`` of a request sent at ``t_send`` is due at ``t_send + prefill + k * per_token``;
the emulator runs with as many slots as streams, so nothing queues and the client's lateness
is the emulator's plus loopback transit plus the client's own event loop.

Two ways to read (``--client-read-ms``). 0: eagerly, every emulator write as it arrives (one
wake-up and one read per write: the client's CPU grows with the emulator's writes). ``R > 0``:
lazily, every connection read once every ``R`` ms by one timer, the sockets unwatched in
between (the kernel's receive buffer holds the bytes: at 560 tokens/s a stream sends ~2 KB
per 20 ms against a 128 KiB buffer, so the emulator's writes never wait), so the client costs
one read per stream per ``R`` ms whatever the emulator writes, and its lateness includes up to
``R`` ms of waiting to be read, by design; a request ends, and the next is sent, at the read
that sees its end. The target is the emulator's own lateness, which the clients only have to
consume and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import numpy as np

__all__ = ["main"]

_TOKEN = b'"delta":{"content":'


class _Recorder:
    """Per measured read: (arrival, send time, first token index, tokens in the read)."""

    def __init__(self, measure_from: float, measure_to: float) -> None:
        self.reads: list[tuple[float, float, int, int]] = []
        self.measure_from = measure_from
        self.measure_to = measure_to
        self.tokens_total = 0
        self.requests_total = 0


class _Answer:
    """The reading side of one connection: parses one streamed answer at a time and counts
    its tokens (one ``bytes.count`` over the frames a read completes), recording measured
    reads. The answer must be ``200`` with a chunked body (the emulator's SSE stream); it
    ends at the chunked terminator after ``data: [DONE]``."""

    def __init__(self, rec: _Recorder) -> None:
        self._rec = rec
        self.done: asyncio.Future[int] | None = None
        self._tail = b""
        self._in_head = True
        self._seen_done = False
        self._t_send = 0.0
        self._k = 0

    def begin(self) -> asyncio.Future[int]:
        """A new answer is expected: the future gives its tokens once it ended."""
        self.done = asyncio.get_running_loop().create_future()
        self._tail, self._in_head, self._seen_done, self._k = b"", True, False, 0
        self._t_send = time.monotonic()
        return self.done

    def feed(self, data: bytes, now: float) -> str | None:
        """Take bytes read at ``now``; a reason when the answer is not what it must be."""
        buf = self._tail + data
        if self._in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._tail = buf
                return None
            if not buf.startswith(b"HTTP/1.1 200 ") or b"chunked" not in buf[:end].lower():
                return f"unexpected answer: {buf[:200]!r}"
            buf = buf[end + 4:]
            self._in_head = False
        last = buf.rfind(b"\n\n")
        cut = last + 2 if last >= 0 else 0
        count = buf.count(_TOKEN, 0, cut)
        if not self._seen_done and cut:
            self._seen_done = b"data: [DONE]" in buf[max(0, cut - 64):cut]
        self._tail = buf[cut:]
        rec = self._rec
        if count and rec.measure_from <= now < rec.measure_to:
            rec.reads.append((now, self._t_send, self._k, count))
        self._k += count
        if self._seen_done and self._tail.endswith(b"\r\n0\r\n\r\n"):
            done, self.done = self.done, None
            if done is not None and not done.done():
                done.set_result(self._k)
        return None

    def fail(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)


class _Stream(asyncio.Protocol):
    """Eager reading (``--client-read-ms 0``): a bare protocol on one keep-alive HTTP/1.1
    connection, each read handled as it arrives (a loop wake-up per emulator write), with no
    task woken per read."""

    def __init__(self, request: bytes, rec: _Recorder) -> None:
        self._request = request
        self._answer = _Answer(rec)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._answer.fail(ConnectionError(f"connection lost mid-stream: {exc}"))

    def send(self) -> asyncio.Future[int]:
        """Send the request; the future gives the tokens of the answer once it ended."""
        assert self._transport is not None
        done = self._answer.begin()
        self._transport.write(self._request)
        return done

    def data_received(self, data: bytes) -> None:
        why = self._answer.feed(data, time.monotonic())
        if why is not None:
            self._answer.fail(RuntimeError(why))
            if self._transport is not None:
                self._transport.close()


class _Polled:
    """Lazy reading (``--client-read-ms R``): a non-blocking socket the event loop does not
    watch; :class:`_Poller` reads it every ``R`` ms. The emulator's writes then wake nobody
    (the socket's buffer holds the bytes) and one read carries up to ``R`` ms of frames, so
    the client costs a read per stream per ``R`` ms whatever the emulator's write rate, and
    its measured lateness includes up to ``R`` ms of waiting to be read, by design."""

    def __init__(self, sock: socket.socket, request: bytes, rec: _Recorder) -> None:
        self._sock = sock
        self._request = request
        self._answer = _Answer(rec)

    def send(self) -> asyncio.Future[int]:
        """Send the request (a few hundred bytes: one non-blocking send takes it whole)."""
        done = self._answer.begin()
        if self._sock.send(self._request) != len(self._request):
            raise RuntimeError("request not sent whole")
        return done

    def read(self) -> None:
        """Read everything the socket holds now (nothing when no answer is expected)."""
        if self._answer.done is None:
            return
        try:
            while True:
                data = self._sock.recv(_READ_BYTES)
                if not data:
                    self._answer.fail(ConnectionError("connection closed mid-stream"))
                    return
                why = self._answer.feed(data, time.monotonic())
                if why is not None:
                    self._answer.fail(RuntimeError(why))
                    return
                if len(data) < _READ_BYTES:
                    return
        except BlockingIOError:
            return
        except OSError as exc:
            self._answer.fail(exc)

    def close(self) -> None:
        self._sock.close()


_READ_BYTES = 1 << 16


class _Poller:
    """Reads every :class:`_Polled` connection of the process every ``interval_s``, on a
    fixed grid (a late poll does not shift the ones after it)."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._conns: list[_Polled] = []
        self._next = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: _Polled) -> None:
        self._conns.append(conn)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._next = loop.time() + self._interval
            self._handle = loop.call_at(self._next, self._poll)

    def remove(self, conn: _Polled) -> None:
        self._conns.remove(conn)
        if not self._conns and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _poll(self) -> None:
        for conn in self._conns:
            conn.read()
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next += self._interval
        if self._next <= now:
            self._next = now + self._interval
        self._handle = loop.call_at(self._next, self._poll)


def _request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return parts.hostname, parts.port, head.encode() + body


async def _worker(url: str, body: bytes, rec: _Recorder, poller: _Poller | None) -> None:
    host, port, request = _request(url, body)
    conn: _Stream | _Polled
    if poller is None:
        transport, conn = await asyncio.get_running_loop().create_connection(
            lambda: _Stream(request, rec), host, port)
        close = transport.close
    else:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Polled(sock, request, rec)
        poller.add(conn)
        close = conn.close
    try:
        while time.monotonic() < rec.measure_to:
            tokens = await asyncio.wait_for(conn.send(), 60)
            rec.tokens_total += tokens  # not `+= await`: that reads the total before waiting
            rec.requests_total += 1
    finally:
        if poller is not None and isinstance(conn, _Polled):
            poller.remove(conn)
        close()


def _go_times(go: Path) -> tuple[float, float, float]:
    """Wait for the go file (run in a thread); its three times."""
    while not go.exists():
        time.sleep(0.01)
    begin, lo, hi = (float(x) for x in go.read_text().split())
    return begin, lo, hi


def _lateness(reads: list[tuple[float, float, int, int]], prefill_s: float,
              per_token_s: float) -> np.ndarray:
    """Rows: lateness (ms) of every measured token; 1.0 for a first token."""
    if not reads:
        return np.zeros((2, 0), dtype=np.float32)
    arr = np.array(reads, dtype=float)
    now, t_send, k0, count = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(int)
    rows = np.repeat(np.arange(len(arr)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    k = k0[rows] + offsets
    late = (now[rows] - (t_send[rows] + prefill_s + k * per_token_s)) * 1e3
    return np.stack([late, (k == 0).astype(float)]).astype(np.float32)


async def _run(args: argparse.Namespace) -> None:
    body = json.dumps({
        "model": args.model, "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": args.max_tokens, "stream": True,
    }).encode()
    print("ready", flush=True)
    begin, lo, hi = await asyncio.to_thread(_go_times, args.go)
    rec = _Recorder(lo, hi)
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    urls = args.urls
    poller = _Poller(args.client_read_ms / 1e3) if args.client_read_ms > 0 else None
    await asyncio.gather(*(
        _worker(urls[(args.offset + i) % len(urls)], body, rec, poller)
        for i in range(args.streams)
    ))
    late = _lateness(rec.reads, args.prefill_ms / 1e3, args.per_token_ms / 1e3)
    np.save(args.out.with_suffix(".npy"), late)
    args.out.write_text(json.dumps({
        "tokens_total": rec.tokens_total, "requests_total": rec.requests_total,
        "measured_tokens": int(late.shape[1]),
    }))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity_client")
    p.add_argument("--urls", nargs="+", required=True)
    p.add_argument("--offset", type=int, default=0, help="worker i uses urls[(offset+i) % n]")
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--model", default="bench-model")
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--prefill-ms", type=float, required=True)
    p.add_argument("--per-token-ms", type=float, required=True)
    p.add_argument("--go", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nice", type=int, default=0,
                   help="add this to the process's nice value first (the load generator yields"
                   " the cores to the emulator it measures)")
    p.add_argument("--client-read-ms", type=float, default=0.0,
                   help="read every connection every this many ms (0: read each write as it"
                   " arrives)")
    args = p.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
