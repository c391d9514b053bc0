"""One upstream attempt: send the request to a backend and relay its answer byte for byte.

:meth:`Upstream.open` sends the request and waits for the backend's status line; every failure up
to there is an :class:`~router.errors.UpstreamFailure` that may be retried on another replica.
A backend error status the router handles itself (429 deadline, 5xx) is raised the same way;
other statuses (the backend's own 400s) are relayed as they are.

:func:`relay` then writes the answer to the client:

* non-streaming: the whole body is read in one go, then sent as one ``web.Response`` (one
  write: status line, headers and body) with the backend's status and headers;
* streaming: chunks are written as they arrive (``readany`` + ``await write``, so a slow client
  slows the backend read: end-to-end backpressure). Only whole SSE events are written: a chunk's
  bytes after its last blank line wait for the next chunk (one ``rfind`` per chunk, no event
  parsing). Events that came with the backend's status line leave with the router's headers in
  one write, and the last events with the end of the chunked body (each write is a system call
  and a wake-up of the client). If the backend dies mid-stream the client gets a
  ``data: {"error": ...}`` event and ``data: [DONE]`` and a clean end of the chunked body.

The usage the backend puts in its last event (or non-streaming body) is read for metrics: only
the last ``"usage"`` object is decoded, not the whole body. Requests go through
:class:`router.backend_http.BackendClient` (keep-alive connections, llhttp), with a connect
timeout (``connect_s``) and a read timeout (``read_s`` without a byte) and no total, since a
long generation is not a stuck one. Upstream requests ask for ``Accept-Encoding: identity``: the
router reads the usage in the body and relays it to a client that asked for no encoding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from lpu_protocol.headers import X_LPU_DEADLINE_MS, X_LPU_SCHEDULE
from router.backend_http import BackendClient, Response
from router.config import TimeoutConfig
from router.errors import Draining, UpstreamFailure, map_client_error, map_upstream_status
from router.outcomes import Outcome

__all__ = ["HOP_BY_HOP", "RelayResult", "Upstream", "Usage", "relay", "schedule_of",
           "upstream_headers", "usage"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never forwarded upstream: credentials (every header the OpenAI and Azure OpenAI clients put a
# key in), what aiohttp sets for the new connection, and the body's encoding: the router decodes
# a client's Content-Encoding (router.body_encoding) and forwards the body decoded.
_NOT_UPSTREAM = HOP_BY_HOP | {"authorization", "x-api-key", "api-key", "host", "content-length",
                              "content-encoding", "accept-encoding", "cookie", "x-request-id",
                              X_LPU_DEADLINE_MS, "content-type"}
# Never copied back: the router sets its own framing and identity, a backend's cookies are
# not the client's (one upstream session serves every client), and its schedule reveals its
# load (the router reads it: :func:`schedule_of`).
_NOT_DOWNSTREAM = HOP_BY_HOP | {"content-length", "server", "date", "x-request-id", "set-cookie",
                                X_LPU_SCHEDULE}
_USAGE = b'"usage"'
_USAGE_MAX = 4096
"""Bytes after a ``"usage"`` key that its object may take (a usage object is ~100-300 bytes)."""
_DECODER = json.JSONDecoder()


def upstream_headers(incoming: Mapping[str, str], request_id: str,
                     deadline_s: float | None) -> list[tuple[str, str]]:
    """The headers of the upstream request, in one pass over the client's: those that may be
    forwarded (not hop-by-hop, not credentials: ``_NOT_UPSTREAM``), then the router's own
    (``x-request-id``, the JSON body's type, no encoding, ``x-lpu-deadline-ms``)."""
    drop = _NOT_UPSTREAM
    connection = incoming.get("Connection")
    if connection:
        drop = drop | {h.strip().lower() for h in connection.split(",")}
    out = [(k, v) for k, v in incoming.items() if k.lower() not in drop]
    out += (("x-request-id", request_id), ("Content-Type", "application/json"),
            ("Accept-Encoding", "identity"))
    if deadline_s is not None:
        out.append((X_LPU_DEADLINE_MS, f"{deadline_s * 1e3:.1f}"))
    return out


def schedule_of(upstream: Response) -> str | None:
    """The backend's ``x-lpu-schedule`` header on an answer whose status line came (None:
    it sends none); the caller merges it (:meth:`router.admission.Ticket.schedule`)."""
    return upstream.headers.get(X_LPU_SCHEDULE)


class _EventStream(web.StreamResponse):
    """A stream response whose headers wait for its first write, so that they leave together
    with the first events (as aiohttp's own ``web.Response`` does; an aiohttp without this
    class attribute sends them at ``prepare``: one write more, nothing else)."""

    _send_headers_immediately = False


@dataclass(slots=True)
class RelayResult:
    response: web.StreamResponse
    outcome: Outcome
    completion_tokens: int | None = None
    """The backend's ``usage.completion_tokens``, else the events relayed (streams)."""
    failure: UpstreamFailure | None = None
    """Set when the backend failed after the client got the status (mid-stream)."""
    prompt_tokens: int | None = None
    """The backend's ``usage.prompt_tokens``, when it reported one."""


class Upstream:
    """Sends completions to backends over one :class:`~router.backend_http.BackendClient`."""

    def __init__(self, timeouts: TimeoutConfig) -> None:
        self._timeouts = timeouts
        self.session: aiohttp.ClientSession | None = None
        """aiohttp's session, for what is not a completion (probes, polls, rollouts)."""
        self.client: BackendClient | None = None
        """The completions' client (:mod:`router.backend_http`); made by :meth:`start`."""
        # Responses being relayed, so the drain deadline can end them; :meth:`close` drops each.
        self._open: set[Response] = set()
        # Tasks waiting in open() (for a status line, or an error body), and those of them the
        # drain deadline cancelled: their cancel is the deadline's, not the client's.
        self._opening: set[asyncio.Task[Any]] = set()
        self._ended: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Make the completions' client (in the running loop)."""
        t = self._timeouts
        self.client = BackendClient(connect_s=t.connect_s, read_s=t.read_s,
                                    keepalive_s=t.keepalive_s)

    def stop(self) -> None:
        """Close the completions' idle connections."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def abort_all(self) -> int:
        """The drain deadline: end every upstream request still running; return how many.

        A response being read fails with :class:`~router.errors.Draining` (a stream ends with
        an SSE error frame and ``[DONE]``, a non-streamed answer becomes the 503); a request
        still waiting for its status line is cancelled there (the backend sees the upstream
        connection close) and :meth:`open` raises the same failure."""
        ended = 0
        for resp in list(self._open):
            if not resp.closed and not resp.content.is_eof():
                resp.content.set_exception(Draining())
                ended += 1
        for task in self._opening - self._ended:
            self._ended.add(task)
            task.cancel()
            ended += 1
        return ended

    async def open(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]
                   ) -> Response:
        """POST ``body`` to ``url``; return the response once its status line came."""
        task = asyncio.current_task()
        assert task is not None
        self._opening.add(task)
        try:
            resp = await self._post(url, body, headers)
        except asyncio.CancelledError:
            # The drain deadline's cancel (and no other pending): the request ends as drained.
            if task in self._ended and task.uncancel() == 0:
                raise map_client_error(Draining(), got_headers=False) from None
            raise
        finally:
            self._opening.discard(task)
            self._ended.discard(task)
        self._open.add(resp)
        return resp

    def close(self, resp: Response) -> None:
        """The relay of ``resp`` ended: drop its connection if content is left unread (the
        client left or the stream broke: the backend sees the cancel at once)."""
        self._open.discard(resp)
        resp.close()

    async def _post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]
                    ) -> Response:
        assert self.client is not None, "the app's cleanup_ctx starts the client"
        try:
            resp = await self.client.post(url, body, headers)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise map_client_error(exc, got_headers=False) from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                resp.close()
                raise map_client_error(exc, got_headers=True) from exc
            except asyncio.CancelledError:
                resp.close()
                raise
            failure = map_upstream_status(resp.status, raw, resp.headers)
            if failure is not None:
                resp.release()
                raise failure
        return resp


@dataclass(frozen=True, slots=True)
class Usage:
    """The token counts a backend reported in its ``usage`` object (None: not reported)."""

    prompt_tokens: int | None
    completion_tokens: int | None


def usage(data: bytes) -> Usage | None:
    """The last ``"usage"`` object in ``data`` (a JSON body or SSE events) that holds
    ``completion_tokens``; None when none does.

    Only that object is decoded: ``"usage"`` followed by ``:`` is always a key, since a quote
    inside a JSON string is escaped.
    """
    end = len(data)
    while (at := data.rfind(_USAGE, 0, end)) >= 0:
        found = _usage_at(data, at + len(_USAGE))
        if found is not None:
            return found
        end = at
    return None


def _count(obj: dict[str, Any], key: str) -> int | None:
    n = obj.get(key)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _usage_at(data: bytes, start: int) -> Usage | None:
    """The usage object that follows ``: `` at ``start``, if it has ``completion_tokens``."""
    text = data[start:start + _USAGE_MAX].decode("utf-8", "replace").lstrip()
    if not text.startswith(":"):
        return None
    text = text[1:].lstrip()
    try:
        obj, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    completion = _count(obj, "completion_tokens")
    return None if completion is None else Usage(_count(obj, "prompt_tokens"), completion)


def _sse_error(failure: UpstreamFailure) -> bytes:
    err = failure.api_error()
    return b"data: " + err.to_json() + b"\n\ndata: [DONE]\n\n"


async def relay(request: web.Request, upstream: Response,
                headers: Mapping[str, str], on_first_byte: Callable[[], None]) -> RelayResult:
    """Relay ``upstream`` to the client; ``headers`` are the router's own response headers.

    ``on_first_byte`` runs when the first whole event of a stream is relayed: that is the
    first token. A non-streamed answer arrives whole, at the end of its generation, so it has
    no first token to report (reporting its first byte would pin the request's start a whole
    generation late in the timeline). The caller closes ``upstream``. Client disconnects
    surface as ``ConnectionResetError`` or cancellation and are not caught here.
    """
    if not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
        try:
            raw = await upstream.read()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise map_client_error(exc, got_headers=True) from exc
        resp = web.Response(status=upstream.status, body=raw)
        _copy_headers(upstream.headers, resp.headers)
        resp.headers.update(headers)
        if upstream.status >= 400:
            return RelayResult(resp, Outcome.FAILED)
        used = usage(raw)
        if used is None:
            return RelayResult(resp, Outcome.COMPLETED)
        return RelayResult(resp, Outcome.COMPLETED, used.completion_tokens,
                           prompt_tokens=used.prompt_tokens)
    return await _relay_events(request, upstream, headers, on_first_byte)


def _copy_headers(upstream: Mapping[str, str], out: CIMultiDict[str]) -> None:
    """The backend's response headers the client may see (not ``_NOT_DOWNSTREAM``, nor what
    its ``Connection`` header names), added to ``out``."""
    drop = _NOT_DOWNSTREAM
    connection = upstream.get("Connection")
    if connection:
        drop = drop | {h.strip().lower() for h in connection.split(",")}
    for k, v in upstream.items():
        if k.lower() not in drop:
            out.add(k, v)


async def _relay_events(request: web.Request, upstream: Response,
                        headers: Mapping[str, str], on_first_byte: Callable[[], None]
                        ) -> RelayResult:
    """The streaming half of :func:`relay`: whole SSE events, as they come."""
    content = upstream.content
    try:
        data = content.read_nowait()  # what came with the status line
    except (aiohttp.ClientError, TimeoutError):
        data = b""  # the stream's error shows again on the first read below
    # Headers wait for the first events only when those are already here: a client
    # still gets the headers (and the prediction in them) before a long prefill ends.
    kind = _EventStream if b"\n\n" in data else web.StreamResponse
    stream = kind(status=upstream.status)
    out = stream.headers  # filled in place: one copy of the backend's headers, not three
    _copy_headers(upstream.headers, out)
    out.update(headers)
    out["X-Accel-Buffering"] = "no"
    out["Cache-Control"] = "no-cache"
    await stream.prepare(request)
    pending = b""
    last_usage = b""  # the last piece that names a usage (a reference, not a copy)
    events = 0
    first = True
    try:
        while True:
            if pending:
                data = pending + data
            cut = data.rfind(b"\n\n") + 2
            if cut < 2:
                pending = data
            else:
                whole, pending = data[:cut], data[cut:]
                if first:
                    first = False
                    on_first_byte()
                events += whole.count(b"data: {")
                if _USAGE in whole:
                    last_usage = whole
                if content.at_eof():  # the last events: one write with the end of the body
                    break
                await stream.write(whole)
                whole = b""
            data = await content.readany()
            if not data:
                whole = b""
                break
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = map_client_error(exc, got_headers=True)
        await stream.write_eof(_sse_error(failure))
        return RelayResult(stream, Outcome.FAILED, events, failure)
    if _USAGE in pending:
        last_usage = pending
    await stream.write_eof(whole + pending if pending else whole)
    used = usage(last_usage) if last_usage else None
    if used is None:
        return RelayResult(stream, Outcome.COMPLETED, events)
    return RelayResult(stream, Outcome.COMPLETED, used.completion_tokens,
                       prompt_tokens=used.prompt_tokens)


