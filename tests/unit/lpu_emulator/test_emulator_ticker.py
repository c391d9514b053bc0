"""The loop-wide ticker (lpu_emulator.ticker) on a virtual clock: exact write instants and
tokens per write for given due times, quantum and wake-up period; hand-backs.

Times are binary fractions (per-token 1/512 s, prefill 1/16 s) so due times are exact floats.
A job's token ``j`` is due at ``start + PREFILL + j * STEP``; the handler has written token 0
at its due time before it hands the stream over (``sent = 1``, ``last_write = due(0)``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterator

import pytest

from lpu_emulator.engine import Job
from lpu_emulator.frames import ResponseIdentity, StreamFrames
from lpu_emulator.metrics import make_metrics
from lpu_emulator.text import TokenText
from lpu_emulator.ticker import HIGH_WATER, Handback, TickedStream, Ticker
from lpu_protocol.artifact import Timings

PREFILL, STEP = 1 / 16, 1 / 512
TEXT = TokenText()
IDENT = ResponseIdentity("chat", "chatcmpl-t", 0, "m", "fp", "req_t")


class _Handle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualLoop:
    """A clock and a timer queue; :meth:`run_until` fires timers in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None], _Handle]] = []
        self._seq = itertools.count()
        self.loop = asyncio.new_event_loop()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Callable[[], None]) -> _Handle:
        h = _Handle()
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), cb, h))
        return h

    def run_until(self, t: float) -> None:
        while self._timers and self._timers[0][0] <= t:
            at, _, cb, h = heapq.heappop(self._timers)
            if not h.cancelled:
                self.now = at
                cb()
        self.now = t


class RecordingSink:
    def __init__(self, vl: VirtualLoop) -> None:
        self.vl = vl
        self.writes: list[tuple[float, int, bool]] = []
        """(instant, token frames, carries the finish)."""
        self.buffer = 0
        self.gone = False

    def write(self, data: bytes) -> None:
        self.writes.append((self.vl.now, data.count(b'"content":'), b"[DONE]" in data))

    def buffered(self) -> int:
        return self.buffer

    def closing(self) -> bool:
        return self.gone


@pytest.fixture
def vl() -> Iterator[VirtualLoop]:
    v = VirtualLoop()
    yield v
    v.loop.close()


def due(start: float, j: int) -> float:
    return start + PREFILL + j * STEP


def stream(vl: VirtualLoop, n: int, quantum: float, start: float = 0.0,
           ) -> tuple[TickedStream, RecordingSink]:
    timings = Timings(PREFILL, STEP)
    job = Job(id=0, arrival=start, output_tokens=n, service_s=timings.service_s(n),
              timings=timings, start=start, end=start + timings.service_s(n))
    sink = RecordingSink(vl)
    series = make_metrics().child("m")
    s = TickedStream(job=job, ids=list(range(n)), frames=StreamFrames(IDENT, False),
                     token_json=TEXT.json, series=series, sink=sink, finish=b"data: [DONE]\n\n",
                     quantum=lambda: quantum, sent=1, last_write=due(start, 0))
    return s, sink


def ticker(vl: VirtualLoop, wake_s: float = 0.001) -> Ticker:
    return Ticker(clock=vl.clock, call_later=vl.call_later, make_future=vl.loop.create_future,
                  wake_s=wake_s, timer_bias_s=0.0)


@pytest.mark.parametrize(("quantum", "expected"), [
    # q = 5 ms: after a write at due(k), the next carries tokens up to the first one due
    # after due(k) + q (k + 3, as 3 * STEP > q > 2 * STEP), at that token's due time.
    (0.005, [(1, 3), (4, 6), (7, 9)]),
    # q = 3 ms: two tokens a write (2 * STEP > q > STEP); the last write is cut at the end.
    (0.003, [(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]),
    # q below a token time: every token at its own due time.
    (0.001, [(j, j) for j in range(1, 10)]),
], ids=["q5ms", "q3ms", "q1ms"])
def test_writes_are_due_with_their_last_token(
        vl: VirtualLoop, quantum: float, expected: list[tuple[int, int]]) -> None:
    s, sink = stream(vl, 10, quantum)
    t = ticker(vl)
    vl.now = due(0, 0)
    done = t.run(s, 10)
    vl.run_until(1.0)
    assert [w[0] for w in sink.writes] == pytest.approx([due(0, last) for _, last in expected])
    assert [w[1] for w in sink.writes] == [last - first + 1 for first, last in expected]
    assert [w[2] for w in sink.writes] == [False] * (len(expected) - 1) + [True]
    assert done.result() is Handback.STOPPED and s.sent == 10
    # Every token of a write is late by (m - 1 - i) * STEP: the write is at its last token.
    later = s.series.token_later
    assert later.count == 9
    assert later.sum == pytest.approx(sum(
        STEP * (last - first) * (last - first + 1) / 2 for first, last in expected))
    assert t.writes == len(expected)


def test_wakeups_at_most_once_per_wake_period(vl: VirtualLoop) -> None:
    """Two streams whose tokens are due 0.25 ms apart, one token a write: the ticker wakes at
    ``due(0, 1)`` + 0, 1, 2, 3 ms (once per wake period, never sooner), and each write goes
    out at the first wake-up at or after its due time; its lateness counts the wait."""
    t = ticker(vl, wake_s=0.001)
    a, sink_a = stream(vl, 3, 0.001)
    b, sink_b = stream(vl, 3, 0.001, start=0.00025)
    vl.now = due(0.00025, 0)
    t.run(a, 3)
    t.run(b, 3)
    vl.run_until(1.0)
    t1 = due(0, 1)
    assert [w[0] for w in sink_a.writes] == pytest.approx([t1, t1 + 0.002])
    assert [w[0] for w in sink_b.writes] == pytest.approx([t1 + 0.001, t1 + 0.003])
    assert a.series.token_later.sum == pytest.approx(t1 + 0.002 - due(0, 2))
    assert b.series.token_later.sum == pytest.approx(
        t1 + 0.001 - due(0.00025, 1) + t1 + 0.003 - due(0.00025, 2))


def test_stop_hands_back_and_resumes(vl: VirtualLoop) -> None:
    """A stall at token 4: the ticker writes up to token 3, hands back; resumed later, the
    tokens due meanwhile go out in the first write."""
    s, sink = stream(vl, 10, 0.001)
    t = ticker(vl)
    vl.now = due(0, 0)
    first = t.run(s, 4)
    vl.run_until(1.0)
    assert first.result() is Handback.STOPPED and s.sent == 4
    assert [w[0] for w in sink.writes] == [due(0, 1), due(0, 2), due(0, 3)]
    vl.now = due(0, 8) + 0.0001  # the stall ends there
    second = t.run(s, 10)
    vl.run_until(2.0)
    assert second.result() is Handback.STOPPED and s.sent == 10
    resumed = sink.writes[3:]
    # The first write after the stall: tokens 4 .. 8, due already; then 9 on time.
    assert resumed == [(due(0, 8) + 0.0001, 5, False), (due(0, 9), 1, True)]


def test_full_buffer_hands_back_for_drain(vl: VirtualLoop) -> None:
    s, sink = stream(vl, 10, 0.001)
    t = ticker(vl)
    vl.now = due(0, 0)
    sink.buffer = HIGH_WATER + 1
    waiter = t.run(s, 10)
    vl.run_until(1.0)
    assert waiter.result() is Handback.DRAIN
    assert (s.sent, len(sink.writes)) == (2, 1)


def test_closed_transport_is_not_written(vl: VirtualLoop) -> None:
    s, sink = stream(vl, 10, 0.001)
    t = ticker(vl)
    vl.now = due(0, 0)
    sink.gone = True
    waiter = t.run(s, 10)
    vl.run_until(1.0)
    assert waiter.result() is Handback.GONE and sink.writes == []


def test_cancelled_stream_is_dropped(vl: VirtualLoop) -> None:
    s, sink = stream(vl, 10, 0.001)
    t = ticker(vl)
    vl.now = due(0, 0)
    waiter = t.run(s, 10)
    vl.run_until(due(0, 2))
    waiter.cancel()
    vl.run_until(1.0)
    assert [w[0] for w in sink.writes] == [due(0, 1), due(0, 2)]


def test_a_stop_past_the_end_is_the_end(vl: VirtualLoop) -> None:
    """The handler's stop for a stream without faults may be ``n + 1``: the last write still
    carries the finish, and ``sent`` is ``n``."""
    s, sink = stream(vl, 4, 0.001)
    t = ticker(vl)
    vl.now = due(0, 0)
    waiter = t.run(s, 5)
    vl.run_until(1.0)
    assert waiter.result() is Handback.STOPPED and s.sent == 4
    assert [(w[1], w[2]) for w in sink.writes] == [(1, False), (1, False), (1, True)]


def test_timer_bias_delays_each_wake_up(vl: VirtualLoop) -> None:
    """With a timer bias every timer fires that much after the write it is for is due."""
    s, sink = stream(vl, 3, 0.001)
    t = Ticker(clock=vl.clock, call_later=vl.call_later, make_future=vl.loop.create_future,
               wake_s=0.001, timer_bias_s=0.0005)
    vl.now = due(0, 0)
    t.run(s, 3)
    vl.run_until(1.0)
    assert [w[0] for w in sink.writes] == pytest.approx([due(0, 1) + 0.0005, due(0, 2) + 0.0005])


def test_a_write_late_by_the_timer_bias_keeps_one_token_a_write(vl: VirtualLoop) -> None:
    """Quantum 1.5 ms below the token time (1.953 ms) and every wake-up 0.5 ms late (the
    timer bias): the plan runs from each write's last token's due time, not from its late
    wake-up, so every token is written alone at its due time plus the bias (planning from
    the wake-up, 0.5 + 1.5 ms passes the next token's due time and writes carry two)."""
    s, sink = stream(vl, 8, 0.0015)
    t = Ticker(clock=vl.clock, call_later=vl.call_later, make_future=vl.loop.create_future,
               wake_s=0.001, timer_bias_s=0.0005)
    vl.now = due(0, 0) + 0.0005
    s.last_write = vl.now
    t.run(s, 8)
    vl.run_until(1.0)
    assert [w[0] for w in sink.writes] == pytest.approx([due(0, j) + 0.0005 for j in range(1, 8)])
    assert [w[1] for w in sink.writes] == [1] * 7
    assert s.series.token_later.sum == pytest.approx(7 * 0.0005)


def test_a_write_later_than_the_slack_plans_from_its_wake_up(vl: VirtualLoop) -> None:
    """A stream handed over 10 ms after its first token was due (a late loop), quantum 5 ms,
    slack 1.5 ms: the next write is planned from the wake-up minus the slack (8.5 ms after
    token 0's due time), so it carries tokens 1 .. 7 at token 7's due time (the first due
    after 13.5 ms), not tokens 1 .. 3 at once: a late loop does not write more often."""
    s, sink = stream(vl, 10, 0.005)
    t = ticker(vl)
    vl.now = due(0, 0) + 0.010
    s.last_write = vl.now
    t.run(s, 10)
    vl.run_until(1.0)
    assert sink.writes[0] == (pytest.approx(due(0, 7)), 7, False)
    # Then on time again: the next write from token 7's due time, tokens 8 .. 9 (the end).
    assert sink.writes[1:] == [(pytest.approx(due(0, 9)), 2, True)]


def test_histograms_count_every_token_of_every_write(vl: VirtualLoop) -> None:
    """Thirty streams at several quanta on a loop whose timers fire late (0 .. 6 token times,
    and once 40): each stream's per-token histogram holds, bucket for bucket, the lateness
    of every token it wrote (write instant minus the token's due time, one by one), and the
    per-write one the lateness of each write's first token."""
    fired = itertools.count()
    late_call_later = vl.call_later

    def call_later(delay: float, cb: Callable[[], None]) -> _Handle:
        k = next(fired)
        extra = 40 * STEP if k == 25 else (k % 7) * STEP
        return late_call_later(delay + extra, cb)

    t = Ticker(clock=vl.clock, call_later=call_later, make_future=vl.loop.create_future,
               wake_s=0.001, timer_bias_s=0.0)
    streams = []
    for i in range(30):
        start = i / 256
        s, sink = stream(vl, 120, (0.001, 0.005, 0.02)[i % 3], start=start)
        streams.append((s, sink, start))
    for s, _, start in sorted(streams, key=lambda x: x[2]):
        vl.run_until(due(start, 0))
        t.run(s, 120)
    vl.run_until(5.0)
    bounds = streams[0][0].series.token_later.bounds
    for s, sink, start in streams:
        per_token = [0] * (len(bounds) + 1)
        per_write = [0] * (len(s.series.lateness_later.bounds) + 1)
        total = 0.0
        j = 1
        for at, m, _ in sink.writes:
            per_write[bisect_left(s.series.lateness_later.bounds, at - due(start, j))] += 1
            for k in range(j, j + m):
                per_token[bisect_left(bounds, at - due(start, k))] += 1
                total += at - due(start, k)
            j += m
        assert j == 120
        assert s.series.token_later.counts == per_token
        assert s.series.token_later.sum == pytest.approx(total)
        assert s.series.lateness_later.counts == per_write
    assert max(m for _, sink, _ in streams for _, m, _ in sink.writes) > 16
