"""One timer for every stream of an event loop: later tokens written without a wake-up per stream.

A stream's first token is written by its own handler at its own due time (its lateness is
what time-to-first-token experiments read). From then on the handler hands the stream to the
loop's :class:`Ticker` and waits for one future: the ticker keeps every handed-over stream in
a heap keyed by the instant of its next write, wakes on one loop timer, and at each wake-up
writes, for every stream whose write is due, all its tokens due by then as one synchronous
write (:class:`Sink`: ``transport.write``, no drain). It gives the stream back (resolves the
future with a :class:`Handback`) when the stream reached the token it was asked to stop at
(its end, a stall, a break), when the transport's write buffer is above :data:`HIGH_WATER`
bytes (that stream then waits for drain, the others go on), or when the transport closes.

When a stream writes. After a write that left ``sent`` tokens written, the next write carries
tokens up to ``j``, the first token due after ``basis + quantum`` (``quantum`` as
:meth:`lpu_emulator.delivery.Deliverer.quantum`), or the last token before the stop if that is
sooner, and is due at token ``j``'s own due time. ``basis`` is the later of the due time of the
last token written and ``now - slack_s`` (``now``: the write's wake-up; ``slack_s``,
:data:`PLAN_SLACK_S`, the timers' own resolution). So a write late by no more
than the timers' resolution does not move the plan (with ``quantum < per_token`` every token
is written alone at its due time; with ``quantum >= per_token`` a write carries
``floor(quantum / per_token) + 1`` tokens), while a loop late by more does not write more
often to catch up: a stream's writes are at least ``quantum - slack_s`` apart (the write
budget holds to within that). Every write is due exactly when its last token is, and a write
of ``m`` tokens makes them late by ``(m - 1) * step, ..., step, 0`` (``step`` = per-token
time) plus the wake-up's own lateness, rather than by up to a quantum for every token.
The ticker wakes at most once per ``wake_s`` (:data:`WAKE_S`, the resolution of uvloop's
timers), at the earliest due write.

Time and timers are injected (``clock``, ``call_later``), so the schedule of writes is
tested exactly on a virtual clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from lpu_emulator.engine import Job
from lpu_emulator.frames import StreamFrames
from lpu_emulator.metrics import ModelSeries

__all__ = [
    "HIGH_WATER", "PLAN_SLACK_S", "WAKE_S", "Handback", "Sink", "TickedStream", "Ticker",
    "TransportSink", "loop_ticker",
]

WAKE_S = 0.001
"""Seconds between two wake-ups of the ticker, at least."""

TIMER_BIAS_S = 0.0005
"""Seconds added to every timer's delay: uvloop rounds a delay to whole milliseconds from a
clock that lags, so a bare timer often fires up to ~1 ms early (a wasted wake-up and a second
timer); with the bias an early wake-up is rare, and a write is late by about the bias."""

PLAN_SLACK_S = WAKE_S + TIMER_BIAS_S
"""Seconds a write may be late (the ticker's wake period plus the timer bias) and still plan
the next one from its last token's due time rather than from its wake-up."""

HIGH_WATER = 64 * 1024
"""Bytes in a transport's write buffer above which its stream waits for drain."""


class Handback(StrEnum):
    """Why the ticker gave a stream back to its handler."""

    STOPPED = "stopped"
    """``sent`` reached the stream's ``stop_at``."""
    DRAIN = "drain"
    """The write buffer is above :data:`HIGH_WATER`: await drain, then hand it over again."""
    GONE = "gone"
    """The transport is closing: the client went away."""


class Sink(Protocol):
    """Where a stream's bytes go (one HTTP response body)."""

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending, now, without waiting."""

    def buffered(self) -> int:
        """Bytes queued but not yet sent."""

    def closing(self) -> bool:
        """True once the connection is closing or closed."""


class TransportSink:
    """A response body on an asyncio transport, with HTTP/1.1 chunked framing when
    ``chunked`` (as aiohttp frames it: ``<hex length>\\r\\n<data>\\r\\n``)."""

    __slots__ = ("_chunked", "_transport", "buffered", "closing")

    buffered: Callable[[], int]
    closing: Callable[[], bool]

    def __init__(self, transport: asyncio.Transport, chunked: bool) -> None:
        self._transport = transport
        self._chunked = chunked
        # The transport's own methods, not a method calling them: one call less per write.
        self.buffered = transport.get_write_buffer_size
        self.closing = transport.is_closing

    def write(self, data: bytes) -> None:
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._transport.write(data)


class TickedStream:
    """One stream's state while the ticker writes it (the handler reads ``sent`` back).

    ``stop_at``: the ticker writes tokens up to (not including) this index, then hands the
    stream back; ``finish``: the bytes that follow the last token (``n``), sent in the same
    write; ``last_write``: when the previous write happened (clock seconds).
    """

    __slots__ = ("finish", "first_due", "frames", "ids", "job", "last_write", "n", "next_j",
                 "quantum", "sent", "series", "sink", "step", "stop_at", "token_json",
                 "waiter")

    def __init__(
        self, *, job: Job, ids: Sequence[int], frames: StreamFrames,
        token_json: Sequence[bytes], series: ModelSeries, sink: Sink, finish: bytes,
        quantum: Callable[[], float], sent: int, last_write: float,
    ) -> None:
        self.job = job
        self.ids = ids
        self.frames = frames
        self.token_json = token_json
        self.series = series
        self.sink = sink
        self.finish = finish
        self.quantum = quantum
        self.sent = sent
        self.last_write = last_write
        self.stop_at = self.n = job.output_tokens
        self.next_j = sent
        # Token j is due at first_due + j * step: the same float as job.token_time(j).
        self.first_due = job.start + job.timings.prefill_s
        self.step = job.timings.per_token_s
        self.waiter: asyncio.Future[Handback] | None = None


class _Timer(Protocol):
    def cancel(self) -> None: ...


class Ticker:
    """Writes handed-over streams on their schedule from one timer (see the module text)."""

    def __init__(
        self, *, clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], _Timer],
        make_future: Callable[[], asyncio.Future[Handback]], wake_s: float = WAKE_S,
        timer_bias_s: float = TIMER_BIAS_S, plan_slack_s: float = PLAN_SLACK_S,
    ) -> None:
        self._clock = clock
        self._call_later = call_later
        self._make_future = make_future
        self._wake_s = wake_s
        self._bias_s = timer_bias_s
        self._slack_s = plan_slack_s
        self._heap: list[tuple[float, int, TickedStream]] = []
        self._seq = itertools.count()
        self._timer: _Timer | None = None
        self._timer_at = 0.0
        self._last_wake = -float("inf")
        self._ticking = False
        self.writes = 0
        """Writes made so far (all streams)."""

    def run(self, s: TickedStream, stop_at: int) -> asyncio.Future[Handback]:
        """Write ``s`` from ``s.sent`` up to ``stop_at`` (``s.sent < stop_at <= n``); the
        future says why it came back. Cancelling it takes the stream out (nothing more is
        written)."""
        s.stop_at = min(stop_at, s.job.output_tokens)
        waiter = s.waiter = self._make_future()
        self._plan(s)
        return waiter

    def _plan(self, s: TickedStream) -> None:
        # The first token due after basis + quantum, as Timings.tokens_due counts (min and
        # max written out: a builtin's call is a good part of this function's cost).
        first_due, step, sent = s.first_due, s.step, s.sent
        basis = first_due + (sent - 1) * step
        woke = s.last_write - self._slack_s
        if woke > basis:
            basis = woke
        target = basis + s.quantum() - first_due
        j = int(target / step) + 1 if target >= 0 else 0
        if j > s.n:
            j = s.n
        if j > s.stop_at - 1:
            j = s.stop_at - 1
        if j < sent:
            j = sent
        s.next_j = j
        at = first_due + j * step
        heapq.heappush(self._heap, (at, next(self._seq), s))
        if not self._ticking and (self._timer is None or at < self._timer_at):
            self._arm(max(at, self._last_wake + self._wake_s))

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = at - self._clock()
        self._timer = self._call_later(delay + self._bias_s if delay > 0 else 0.0, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._clock()
        heap = self._heap
        self._ticking = True
        try:
            if heap and heap[0][0] <= now:
                # Only a wake-up that writes counts: an early one re-arms for the due write.
                self._last_wake = now
                self._due(now)
        finally:
            self._ticking = False
        if heap:
            self._arm(max(heap[0][0], self._last_wake + self._wake_s))

    def _due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            s = heapq.heappop(heap)[2]
            waiter = s.waiter
            if waiter is None or waiter.done():
                continue  # cancelled: its handler is gone
            handback = self._write(s, now)
            if handback is None:
                self._plan(s)
            else:
                s.waiter = None
                waiter.set_result(handback)

    def _write(self, s: TickedStream, now: float) -> Handback | None:
        """Write ``s``'s due tokens; None to keep ticking it."""
        sink = s.sink
        if sink.closing():
            return Handback.GONE
        sent, first_due, step = s.sent, s.first_due, s.step
        # Every token due now, at least up to the planned one and one token, at most up to
        # the stop (<= n).
        due = int((now - first_due) / step) + 1
        floor = s.next_j if s.next_j > sent else sent
        if due <= floor:
            due = floor + 1
        if due > s.stop_at:
            due = s.stop_at
        chunk = s.frames.tokens(s.token_json, s.ids[sent:due])
        if due == s.n:
            chunk += s.finish
        sink.write(chunk)
        written = self._clock()
        self.writes += 1
        series = s.series
        t_sent = first_due + sent * step
        series.lateness_later.observe(now - t_sent)
        series.token_later.observe_run(written - t_sent, step, due - sent)
        s.sent = due
        s.last_write = now
        if due >= s.stop_at:
            return Handback.STOPPED
        if sink.buffered() > HIGH_WATER:
            return Handback.DRAIN
        return None


_LOOP_TICKERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Callable[[], float], Ticker]] = weakref.WeakKeyDictionary()


def loop_ticker(clock: Callable[[], float]) -> Ticker:
    """The running loop's ticker on ``clock`` (one per loop and clock, made on first use):
    every replica served from one process shares it."""
    loop = asyncio.get_running_loop()
    per_clock = _LOOP_TICKERS.setdefault(loop, {})
    found = per_clock.get(clock)
    if found is None:
        found = per_clock[clock] = Ticker(clock=clock, call_later=loop.call_later,
                                          make_future=loop.create_future)
    return found
