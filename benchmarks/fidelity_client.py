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
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


class _Stream(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one streamed answer at a time.

    A bare protocol, not aiohttp's client: a read costs one ``bytes.count`` over the frames it
    completes, with no task woken per read, so the client's own CPU stays small next to the
    emulator's. The answer must be ``200`` with a chunked body (the emulator's SSE stream);
    it ends at the chunked terminator after ``data: [DONE]``.
    """

    def __init__(self, request: bytes, rec: _Recorder) -> None:
        self._request = request
        self._rec = rec
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[int] | None = None
        self._tail = b""
        self._in_head = True
        self._seen_done = False
        self._t_send = 0.0
        self._k = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError(f"connection lost mid-stream: {exc}"))

    def send(self) -> asyncio.Future[int]:
        """Send the request; the future gives the tokens of the answer once it ended."""
        assert self._transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._tail, self._in_head, self._seen_done, self._k = b"", True, False, 0
        self._t_send = time.monotonic()
        self._transport.write(self._request)
        return self._done

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._tail + data
        if self._in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._tail = buf
                return
            if not buf.startswith(b"HTTP/1.1 200 ") or b"chunked" not in buf[:end].lower():
                self._fail(f"unexpected answer: {buf[:200]!r}")
                return
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
            done, self._done = self._done, None
            if done is not None and not done.done():
                done.set_result(self._k)

    def _fail(self, why: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(RuntimeError(why))
        if self._transport is not None:
            self._transport.close()


def _request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return parts.hostname, parts.port, head.encode() + body


async def _worker(url: str, body: bytes, rec: _Recorder) -> None:
    host, port, request = _request(url, body)
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(lambda: _Stream(request, rec), host, port)
    try:
        while time.monotonic() < rec.measure_to:
            tokens = await asyncio.wait_for(conn.send(), 60)
            rec.tokens_total += tokens  # not `+= await`: that reads the total before waiting
            rec.requests_total += 1
    finally:
        transport.close()


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
    await asyncio.gather(*(
        _worker(urls[(args.offset + i) % len(urls)], body, rec) for i in range(args.streams)
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
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
