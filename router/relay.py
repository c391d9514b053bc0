"""One upstream attempt: send the request to a backend and relay its answer byte for byte.

:meth:`Upstream.open` sends the request and waits for the backend's status line; every failure up
to there is an :class:`~router.errors.UpstreamFailure` that may be retried on another replica.
A backend error status the router handles itself (429 deadline, 5xx) is raised the same way;
other statuses (the backend's own 400s) are relayed as they are.

:func:`relay` then writes the answer to the client:

* non-streaming: the whole body is read, then sent with the backend's status and headers;
* streaming: chunks are written as they arrive (``iter_any`` + ``await write``, so a slow client
  slows the backend read: end-to-end backpressure). Only whole SSE events are written: a chunk's
  bytes after its last blank line wait for the next chunk (one ``rfind`` per chunk, no event
  parsing). If the backend dies mid-stream the client gets a ``data: {"error": ...}`` event
  and ``data: [DONE]`` and a clean end of the chunked body.

The usage the backend puts in its last event (or non-streaming body) is read for metrics. Each
request has ``ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)``: no total,
since a long generation is not a stuck one.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.config import TimeoutConfig
from router.errors import Draining, UpstreamFailure, map_client_error, map_upstream_status
from router.outcomes import Outcome

__all__ = ["HOP_BY_HOP", "RelayResult", "Upstream", "clean_headers", "relay", "usage_tokens"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never forwarded upstream: credentials, and what aiohttp sets for the new connection.
_NOT_UPSTREAM = HOP_BY_HOP | {"authorization", "host", "content-length", "accept-encoding",
                              "cookie", "x-request-id", "x-lpu-deadline-ms"}
# Never copied back: the router sets its own framing and identity.
_NOT_DOWNSTREAM = HOP_BY_HOP | {"content-length", "server", "date", "x-request-id"}
_TAIL = 8192


def clean_headers(headers: Mapping[str, str], drop: frozenset[str] | set[str]) -> CIMultiDict[str]:
    """``headers`` minus ``drop`` and minus any header the ``Connection`` header names."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",") if h.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        lk = k.lower()
        if lk not in drop and lk not in named:
            out.add(k, v)
    return out


@dataclass(slots=True)
class RelayResult:
    response: web.StreamResponse
    outcome: Outcome
    completion_tokens: int | None = None
    failure: UpstreamFailure | None = None
    """Set when the backend failed after the client got the status (mid-stream)."""


class Upstream:
    """Sends requests to backends over one shared session."""

    def __init__(self, timeouts: TimeoutConfig) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s
        )
        self.session: aiohttp.ClientSession | None = None
        # Responses being relayed, so the drain deadline can end them (weak: no bookkeeping).
        self._open: weakref.WeakSet[aiohttp.ClientResponse] = weakref.WeakSet()

    def abort_all(self) -> int:
        """The drain deadline: make every response still being read fail with
        :class:`~router.errors.Draining`, so streams end with an SSE error frame and
        ``[DONE]``; return how many were ended."""
        ended = 0
        for resp in list(self._open):
            if not resp.closed and not resp.content.is_eof():
                resp.content.set_exception(Draining())
                ended += 1
        return ended

    async def open(self, url: str, body: bytes, headers: Mapping[str, str]
                   ) -> aiohttp.ClientResponse:
        """POST ``body`` to ``url``; return the response once its status line came."""
        assert self.session is not None, "the app's cleanup_ctx opens the session"
        try:
            resp = await self.session.post(url, data=body, headers=headers,
                                           timeout=self._timeout)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise map_client_error(exc, got_headers=False) from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                resp.close()
                raise map_client_error(exc, got_headers=True) from exc
            failure = map_upstream_status(resp.status, raw, resp.headers)
            if failure is not None:
                resp.release()
                raise failure
        self._open.add(resp)
        return resp


def usage_tokens(data: bytes) -> int | None:
    """``usage.completion_tokens`` from a JSON body or from the last SSE event that has one."""
    if not data:
        return None
    if data.lstrip()[:1] == b"{":
        return _completion_tokens(data)
    for line in reversed(data.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            n = _completion_tokens(line[6:])
            if n is not None:
                return n
    return None


def _completion_tokens(raw: bytes) -> int | None:
    try:
        usage = json.loads(raw).get("usage")
        n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    except (ValueError, AttributeError):
        return None
    return n if isinstance(n, int) else None


def _sse_error(failure: UpstreamFailure) -> bytes:
    err = failure.api_error()
    return b"data: " + err.to_json() + b"\n\ndata: [DONE]\n\n"


async def relay(request: web.Request, upstream: aiohttp.ClientResponse,
                headers: Mapping[str, str], on_first_byte: Callable[[], None]) -> RelayResult:
    """Relay ``upstream`` to the client; ``headers`` are the router's own response headers.

    The caller closes ``upstream``. Client disconnects surface as ``ConnectionResetError`` or
    cancellation and are not caught here.
    """
    out_headers = clean_headers(upstream.headers, _NOT_DOWNSTREAM)
    out_headers.update(headers)
    streaming = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
    if not streaming:
        try:
            raw = await upstream.read()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise map_client_error(exc, got_headers=True) from exc
        on_first_byte()
        resp = web.Response(status=upstream.status, body=raw, headers=out_headers)
        ok = upstream.status < 400
        return RelayResult(resp, Outcome.COMPLETED if ok else Outcome.FAILED,
                           usage_tokens(raw) if ok else None)

    out_headers["X-Accel-Buffering"] = "no"
    out_headers["Cache-Control"] = "no-cache"
    stream = web.StreamResponse(status=upstream.status, headers=out_headers)
    await stream.prepare(request)
    pending = b""
    tail = b""
    events = 0
    first = True
    try:
        async for chunk in upstream.content.iter_any():
            data = pending + chunk if pending else chunk
            cut = data.rfind(b"\n\n") + 2
            if cut < 2:
                pending = data
                continue
            pending = data[cut:]
            whole = data[:cut]
            if first:
                first = False
                on_first_byte()
            events += whole.count(b"data: {")
            tail = (tail + whole)[-_TAIL:]
            await stream.write(whole)
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = map_client_error(exc, got_headers=True)
        await stream.write(_sse_error(failure))
        await stream.write_eof()
        return RelayResult(stream, Outcome.FAILED, events, failure)
    if pending:
        await stream.write(pending)
        tail = (tail + pending)[-_TAIL:]
    await stream.write_eof()
    n = usage_tokens(tail)
    return RelayResult(stream, Outcome.COMPLETED, n if n is not None else events)


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The backend's response headers that may be copied to the client."""
    return clean_headers(upstream, _NOT_DOWNSTREAM)


def request_headers(incoming: Mapping[str, str]) -> CIMultiDict[str]:
    """The client's request headers that may be forwarded to a backend."""
    return clean_headers(incoming, _NOT_UPSTREAM)
