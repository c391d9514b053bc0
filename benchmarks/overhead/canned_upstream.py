"""A nearly free OpenAI upstream: fixed answers from a raw asyncio protocol (uvloop).

    python3 -m benchmarks.overhead.canned_upstream [--port 0] [--slots 64]

prints ``canned upstream serving on http://127.0.0.1:PORT`` once it listens, and serves until
SIGTERM, HTTP/1.1 with keep-alive (pipelined requests answered in order):

* ``POST /v1/chat/completions``: a fixed ``chat.completion`` JSON, or, when the body says
  ``"stream": true``, a fixed SSE stream (role, four content deltas, finish, usage,
  ``[DONE]``) sent chunked in one write;
* ``GET /load``: an LPU load report with every slot free (``--slots``), ready, tiny
  prefill and per-token times, so a router with timeline admission sees a healthy, idle backend;
* ``GET /readyz``, ``/health``: 200; ``GET /v1/models``: the one model; anything else: 404.

The point is that the upstream costs next to nothing, so what a proxy in front of it adds is
what is measured. Every answer is built once at start; a request costs a header scan and one
``transport.write``. The request body is only searched for ``"stream": true``, not parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import Sequence
from typing import cast

__all__ = ["MODEL", "Answers", "CannedProtocol", "main", "serve"]

MODEL = "llama-3.1-8b-instant"
COMPLETION_TOKENS = 5
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _chunked(content_type: str, events: list[bytes]) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


class Answers:
    """Every answer the upstream gives, as the bytes written (built once)."""

    def __init__(self, slots: int) -> None:
        usage = {"prompt_tokens": 10, "completion_tokens": COMPLETION_TOKENS,
                 "total_tokens": 10 + COMPLETION_TOKENS}
        words = ["The", " answer", " is", " canned", "."]
        self.completion = _response("200 OK", "application/json", json.dumps({
            "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(words)}}],
            "usage": usage}).encode())

        def chunk(delta: dict[str, str], finish: str | None = None,
                  with_usage: bool = False) -> bytes:
            doc: dict[str, object] = {
                "id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0,
                "model": MODEL,
                "choices": [] if with_usage else [{"index": 0, "delta": delta,
                                                   "finish_reason": finish}]}
            if with_usage:
                doc["usage"] = usage
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w}) for w in words[:4]]
        events += [chunk({"content": words[4]}, "stop"), chunk({}, with_usage=True),
                   b"data: [DONE]\n\n"]
        self.stream = _chunked("text/event-stream", events)
        self.load = _response("200 OK", "application/json", json.dumps({
            "slots": slots, "running": 0, "waiting": 0, "slot_free_in_s": [0.0] * slots,
            "prefill_s": 0.0001, "per_token_s": 0.00001, "ready": True}).encode())
        self.ok = _response("200 OK", "application/json", b'{"status": "ok"}')
        self.models = _response("200 OK", "application/json", json.dumps({
            "object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                        "owned_by": "canned"}]}).encode())
        self.not_found = _response("404 Not Found", "application/json",
                                   b'{"error": {"message": "not found"}}')
        self.bad = _response("400 Bad Request", "application/json",
                             b'{"error": {"message": "bad request"}}')

    def get(self, path: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if path == b"/load":
            return self.load
        if path in (b"/readyz", b"/health"):
            return self.ok
        if path == b"/v1/models":
            return self.models
        return self.not_found


class CannedProtocol(asyncio.Protocol):
    """One client connection: parse requests from the byte stream, answer each at once."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        close = False
        while not close:
            request = self._next()
            if request is None:
                break
            answer, close = request
            out.append(answer)
        assert self._transport is not None
        if out:
            self._transport.write(b"".join(out))
        if close or len(self._buf) > _MAX_HEAD + (1 << 26):
            self._transport.close()

    def _next(self) -> tuple[bytes, bool] | None:
        """The answer to the first whole request in the buffer and whether to close after it
        (the request is consumed); None while it is incomplete."""
        end = self._buf.find(_HEAD_END)
        if end < 0:
            return (self._answers.bad, True) if len(self._buf) > _MAX_HEAD else None
        head = self._buf[:end].split(b"\r\n")
        parts = head[0].split(b" ")
        if len(parts) != 3:
            self._buf = b""
            return self._answers.bad, True
        method, path, _ = parts
        length, chunked, close = 0, False, False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        start = end + 4
        if chunked:
            decoded = _dechunk(self._buf, start)
            if decoded is None:
                return None
            body, start = decoded
        else:
            if len(self._buf) < start + length:
                return None
            body, start = self._buf[start:start + length], start + length
        self._buf = self._buf[start:]
        if method == b"POST":
            if path.split(b"?", 1)[0] != b"/v1/chat/completions":
                return self._answers.not_found, close
            stream = _STREAM.search(body) is not None
            return (self._answers.stream if stream else self._answers.completion), close
        return self._answers.get(path), close


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, position after it), None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos:pos + size])
        pos += size + 2


async def serve(port: int, slots: int) -> None:
    """Listen on 127.0.0.1:``port`` (0: any), print the address, serve until SIGTERM."""
    loop = asyncio.get_running_loop()
    answers = Answers(slots)
    server = await loop.create_server(lambda: CannedProtocol(answers), "127.0.0.1", port,
                                      backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"canned upstream serving on http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.overhead.canned_upstream",
                                description="a nearly free canned OpenAI upstream")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slots", type=int, default=64, help="slots its /load report shows free")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.port, args.slots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
