"""Delivering an admitted request on its schedule: the hot path.

A stream sleeps until absolute due times taken from its job (never "sleep one
token time"), so a late wake-up never delays the tokens after it nor anyone's
slot. At each wake-up it writes, in one write, every token due by then: the
first token at its own due time, later ones at most once per quantum. The
quantum is ``tick_s``, raised when many streams are active so that all streams
together wake at most ``write_budget_per_s`` times a second:
``quantum = max(tick_s, active_streams / write_budget_per_s)``. The CPU cost is
one wake-up and one write (one send system call) per stream per quantum,
whatever the token rate, and bounded in total; what grows with the load is how
many tokens share a write, i.e. how late a non-first token may be (at most one
quantum plus the loop's own lateness).

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

from lpu_emulator.backend import Admission
from lpu_emulator.faults import FaultKind
from lpu_emulator.frames import ResponseIdentity, StreamFrames, Timing, completion_body, usage
from lpu_emulator.metrics import EmulatorMetrics
from lpu_emulator.text import TokenText
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
    """Sleep until ``clock() >= t``; return the clock at wake-up."""
    while True:
        now = clock()
        if now >= t:
            return now
        await asyncio.sleep(t - now)


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
        job, ids, plan, series = adm.job, adm.token_ids, adm.faults, adm.series
        clock, token_json = self.clock, self.text.json
        frames = StreamFrames(ident, adm.req.include_usage, adm.tool_call)
        n = job.output_tokens
        # Token positions at which something other than tokens happens.
        break_at = plan.break_at if plan.break_kind is not None and plan.break_at < n else n + 1
        stall_at = plan.stall_at if plan.stall_at is not None and plan.stall_at < n else n + 1
        await adm.schedule.admitted(job)
        series.queue.observe(job.queue_s)
        step = job.timings.per_token_s
        sent = 0
        wake = job.token_time(0)
        first_at = 0.0
        self.active += 1
        try:
            while sent < min(n, break_at):
                now = await sleep_until(wake, clock)
                due = min(max(sent + 1, job.tokens_due(now)), break_at,
                          stall_at if sent < stall_at else n)
                chunk = frames.tokens(token_json, ids[sent:due])
                if sent == 0:
                    chunk = frames.start() + chunk
                if due == n:
                    chunk += frames.finish(
                        adm.finish_reason, usage(adm.prompt_tokens, n), _timing(adm)
                    )
                await resp.write(chunk)
                written = clock()
                if sent == 0:
                    series.lateness_first.observe(now - job.token_time(0))
                    series.token_first.observe_run(written - job.token_time(0), 0.0, 1)
                    series.token_later.observe_run(written - job.token_time(1), step, due - 1)
                    first_at = written
                    series.ttft.observe(first_at - adm.received)
                else:
                    series.lateness_later.observe(now - job.token_time(sent))
                    series.token_later.observe_run(written - job.token_time(sent), step,
                                                   due - sent)
                sent = due
                if sent == stall_at:
                    self.metrics.faults.labels(FaultKind.STALL).inc()
                    await asyncio.sleep(plan.stall_s)
                wake = max(job.token_time(sent), now + self.quantum())
        finally:
            self.active -= 1
            series.generation_tokens.inc(sent)
        if sent < n:
            await self._break_stream(request, resp, frames, adm)
            return resp, Delivered.BROKEN
        await resp.write_eof()
        self._finished(adm, first_at)
        return resp, Delivered.COMPLETED

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
