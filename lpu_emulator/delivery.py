"""Delivering an admitted request on its schedule: the hot path.

A stream's first token is written by its own handler, which sleeps until the absolute due
time taken from its job (never "sleep one token time"), so a late wake-up never delays the
tokens after it nor anyone's slot. Its later tokens are written by the event loop's
:class:`~lpu_emulator.ticker.Ticker`: no wake-up per stream, one synchronous
``transport.write`` per stream write, carrying every token due by then. A stream writes at
most once per quantum, ``quantum = max(tick_s, active_streams / write_budget_per_s)``, so all
streams together write at most ``write_budget_per_s`` times a second (plus one first-token
write per request), and each write is due when its last token is: a write of ``m`` tokens
makes them late by ``(m - 1) * per_token, ..., per_token, 0`` plus the wake-up's own
lateness. The CPU cost is one write (one send system call) per stream per quantum, whatever
the token rate; what grows with the load is how many tokens share a write.

Faults from the request's :class:`~lpu_emulator.faults.FaultPlan` are applied
at token boundaries: a stall pauses the writer (the schedule keeps running), a
break ends the stream by aborting the connection, by a broken frame, or by an
error frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from lpu_emulator.backend import Admission
from lpu_emulator.faults import FaultKind
from lpu_emulator.frames import ResponseIdentity, StreamFrames, Timing, completion_body, usage
from lpu_emulator.metrics import EmulatorMetrics
from lpu_emulator.text import TokenText
from lpu_emulator.ticker import (
    TIMER_BIAS_S,
    Handback,
    TickedStream,
    Ticker,
    TransportSink,
    loop_ticker,
)
from lpu_protocol.openai_api import APIError

__all__ = ["Delivered", "Deliverer", "sleep_until"]

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Delivered(StrEnum):
    """How the delivery ended (the handler's branch and log field)."""

    COMPLETED = "completed"
    BROKEN = "broken"
    """An injected fault ended it early."""


async def sleep_until(t: float, clock: Callable[[], float]) -> float:
    """Sleep until ``clock() >= t``; return the clock at wake-up.

    Each sleep is ``TIMER_BIAS_S`` longer than the time left: uvloop rounds a delay to whole
    milliseconds, so a bare one under 0.5 ms becomes "at once" and a wake-up often comes up to
    ~1 ms early; re-sleeping the rest then spun the loop until the due time (the process
    always runnable, one core's worth of waiting for a core on a shared machine)."""
    while True:
        now = clock()
        if now >= t:
            return now
        await asyncio.sleep(t - now + TIMER_BIAS_S)


def _timing(adm: Admission) -> Timing:
    job = adm.job
    return Timing(
        queue_s=job.queue_s,
        prompt_s=job.timings.prefill_s,
        completion_s=job.timings.decode_s(job.output_tokens),
    )


def _fault_error() -> APIError:
    return APIError(500, "The server had an error while generating the response (injected"
                    " fault).", type="server_error", code="internal_error")


class Deliverer:
    """Writes admitted requests on their schedule. One per app.

    ``tick_s``: the smallest quantum (seconds); ``write_budget_per_s``: the most
    stream wake-ups per second over all streams (None: no bound, ``tick_s`` only).
    """

    def __init__(
        self, *, clock: Callable[[], float], tick_s: float, write_budget_per_s: float | None,
        text: TokenText, metrics: EmulatorMetrics,
    ) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self._per_stream_s = 0.0 if write_budget_per_s is None else 1.0 / write_budget_per_s
        self.text = text
        self.metrics = metrics
        self.active = 0
        """Streams between their first token and their end."""
        self._loop_ticker: Ticker | None = None

    def quantum(self) -> float:
        """Seconds a stream waits at least between two writes, now."""
        return max(self.tick_s, self.active * self._per_stream_s)

    async def stream(
        self, request: web.Request, adm: Admission, ident: ResponseIdentity,
        headers: dict[str, str],
    ) -> tuple[web.StreamResponse, Delivered]:
        """Send ``adm`` as an SSE stream; the status line goes out at admission."""
        resp = web.StreamResponse(status=200, headers={**_SSE_HEADERS, **headers})
        await resp.prepare(request)
        job, plan, series = adm.job, adm.faults, adm.series
        frames = StreamFrames(ident, adm.req.include_usage, adm.tool_call)
        n = job.output_tokens
        # Token positions at which something other than tokens happens.
        break_at = plan.break_at if plan.break_kind is not None and plan.break_at < n else n + 1
        stall_at = plan.stall_at if plan.stall_at is not None and plan.stall_at < n else n + 1
        await adm.schedule.admitted(job)
        series.queue.observe(job.queue_s)
        sent = 0
        first_at = last = 0.0
        ticked: TickedStream | None = None
        self.active += 1
        try:
            while sent < min(n, break_at):
                stop = min(break_at, stall_at if sent < stall_at else n, n)
                if sent == 0:
                    sent, last, first_at = await self._first(resp, adm, frames, stop)
                else:
                    if ticked is None:
                        ticked = self._ticked(request, adm, frames, sent, last)
                    ticked.sent = sent
                    handback = await self._ticker().run(ticked, stop)
                    sent = ticked.sent
                    if handback is Handback.GONE:
                        raise ConnectionResetError("the client closed the stream")
                    if handback is Handback.DRAIN:
                        await request.writer.drain()
                        continue
                if sent == stall_at:
                    self.metrics.faults.labels(FaultKind.STALL).inc()
                    # The schedule ran on: what fell due meanwhile goes out at once after.
                    await asyncio.sleep(plan.stall_s)
        finally:
            self.active -= 1
            series.generation_tokens.inc(sent)
        if sent < n:
            await self._break_stream(request, resp, frames, adm)
            return resp, Delivered.BROKEN
        await resp.write_eof()
        self._finished(adm, first_at)
        return resp, Delivered.COMPLETED

    async def _first(
        self, resp: web.StreamResponse, adm: Admission, frames: StreamFrames, stop: int,
    ) -> tuple[int, float, float]:
        """Write the first token (and every later one due by then, up to ``stop``) at its
        own due time; return the tokens sent, the wake-up instant and the write instant."""
        job, series = adm.job, adm.series
        now = await sleep_until(job.token_time(0), self.clock)
        due = min(max(1, job.tokens_due(now)), stop)
        chunk = frames.start() + frames.tokens(self.text.json, adm.token_ids[:due])
        if due == job.output_tokens:
            chunk += self._finish(adm, frames)
        await resp.write(chunk)
        written = self.clock()
        series.lateness_first.observe(now - job.token_time(0))
        series.token_first.observe_run(written - job.token_time(0), 0.0, 1)
        series.token_later.observe_run(written - job.token_time(1), job.timings.per_token_s,
                                       due - 1)
        series.ttft.observe(written - adm.received)
        return due, now, written

    def _ticked(self, request: web.Request, adm: Admission, frames: StreamFrames, sent: int,
                last: float) -> TickedStream:
        """The stream's state for the ticker, writing straight to the connection (the
        headers are out: the first token went through aiohttp's writer)."""
        writer = request.writer
        transport = request.transport
        assert isinstance(writer, StreamWriter) and transport is not None
        return TickedStream(
            job=adm.job, ids=adm.token_ids, frames=frames, token_json=self.text.json,
            series=adm.series, sink=TransportSink(transport, writer.chunked),
            finish=self._finish(adm, frames), quantum=self.quantum, sent=sent, last_write=last,
        )

    def _ticker(self) -> Ticker:
        if self._loop_ticker is None:
            self._loop_ticker = loop_ticker(self.clock)
        return self._loop_ticker

    @staticmethod
    def _finish(adm: Admission, frames: StreamFrames) -> bytes:
        n = adm.job.output_tokens
        return frames.finish(adm.finish_reason, usage(adm.prompt_tokens, n), _timing(adm))

    async def _break_stream(
        self, request: web.Request, resp: web.StreamResponse, frames: StreamFrames,
        adm: Admission,
    ) -> None:
        kind = adm.faults.break_kind
        assert kind is not None
        await sleep_until(adm.job.token_time(adm.faults.break_at), self.clock)
        self.metrics.faults.labels(kind).inc()
        if kind is FaultKind.CRASH:
            _abort(request)
            return
        if kind is FaultKind.GARBAGE:
            await resp.write(frames.garbage())
        else:
            await resp.write(frames.error(_fault_error()))
        await resp.write_eof()

    async def whole(
        self, request: web.Request, adm: Admission, ident: ResponseIdentity,
        headers: dict[str, str], late_headers: Callable[[], dict[str, str]] | None = None,
    ) -> tuple[web.StreamResponse, Delivered]:
        """Send ``adm`` as one JSON body when its last token is due; ``late_headers`` adds
        the headers whose value is that of the instant the answer is written."""
        job, plan = adm.job, adm.faults
        n = job.output_tokens
        await adm.schedule.admitted(job)
        adm.series.queue.observe(job.queue_s)
        if plan.stall_at is not None and plan.stall_at < n:
            await sleep_until(job.token_time(plan.stall_at), self.clock)
            self.metrics.faults.labels(FaultKind.STALL).inc()
            await asyncio.sleep(plan.stall_s)
        if plan.break_kind is not None and plan.break_at < n:
            await sleep_until(job.token_time(plan.break_at), self.clock)
            self.metrics.faults.labels(plan.break_kind).inc()
            adm.series.generation_tokens.inc(plan.break_at)
            if plan.break_kind is FaultKind.CRASH:
                _abort(request)
                return web.Response(status=500), Delivered.BROKEN
            if plan.break_kind is FaultKind.STREAM_ERROR:
                err = _fault_error()
                return web.Response(
                    status=err.status, body=err.to_json(), content_type="application/json",
                    headers=headers,
                ), Delivered.BROKEN
        await sleep_until(job.token_time(n - 1), self.clock)
        body = completion_body(
            ident, self.text.join(adm.token_ids), adm.finish_reason,
            usage(adm.prompt_tokens, n), _timing(adm), adm.tool_call,
        )
        if plan.break_kind is FaultKind.GARBAGE and plan.break_at < n:
            body = body[: len(body) // 2]
        else:
            adm.series.generation_tokens.inc(n)
        if late_headers is not None:
            headers = headers | late_headers()
        resp = web.Response(body=body, content_type="application/json", headers=headers)
        await resp.prepare(request)
        await resp.write_eof()
        if plan.break_kind is FaultKind.GARBAGE and plan.break_at < n:
            return resp, Delivered.BROKEN
        self._finished(adm, job.token_time(0))
        return resp, Delivered.COMPLETED

    def _finished(self, adm: Admission, first_at: float) -> None:
        """Record a completed request; ``first_at`` is when its first token went out
        (for a non-streaming response, when it was due)."""
        now = self.clock()
        n = adm.job.output_tokens
        series = adm.series
        if not adm.req.stream:
            series.ttft.observe(now - adm.received)
        series.e2e.observe(now - adm.received)
        if n > 1:
            series.tpot.observe((now - first_at) / (n - 1))
        self.metrics.success.labels(adm.model, adm.finish_reason).inc()


def _abort(request: web.Request) -> None:
    """Drop the connection without a clean end (crash fault)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
