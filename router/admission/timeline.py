"""The virtual timeline of one backend replica: when each of its slots frees.

A replica runs its requests first-in first-out over ``c`` slots, and a request
that makes ``n`` tokens holds its slot for exactly ``service_time(n)`` seconds
(the compiled schedule). So the router can predict, on its own clock, when a new
request would start: place every earlier reservation FIFO on the slot that frees
first, and the new request starts when the earliest slot of that *tail* frees.

State, per replica:

* the reservations this router admitted, in admission order, each with its
  reserved occupancy (``duration_s``) and predicted start;
* the *tail*: a heap of the ``c`` slot free times once all of them are placed;
  a new request starts at ``max(now, tail[0])`` (O(1)) and is placed with one
  ``heapreplace`` (O(log c));
* the *floor*: the backend's own tail from its last ``/load`` report, from the
  schedule on its last answer (``x-lpu-schedule``, :meth:`ReplicaTimeline.merge_schedule`)
  or from a deadline refusal, which also counts other routers' work.

The merge rule (:meth:`ReplicaTimeline.rebuild`): place the reservations that
the backend had already seen when it reported (admitted before ``floor_after``)
FIFO from idle slots, take per slot the later of that and the reported free time
(both vectors sorted), then place the reservations admitted since FIFO on top.
Adding work to a FIFO schedule never makes any sorted slot free time earlier,
so each view is a lower bound of the true tail and the merge is the tightest
lower bound the two give. It under-estimates when another router adds work
between reports, and over-estimates when work the report counted ends early;
the backend's own deadline check (it refuses at once a request whose TTFT it
cannot meet) keeps admission exact in the first case, the next report (or a
completion) corrects the second.

A reservation that ends early (completion before ``max_tokens``, cancellation)
is removed and the queued reservations behind it move earlier.

Cost. :meth:`ReplicaTimeline.rebuild` applies the merge rule from scratch:
O(n log c) for n live reservations. A report or a backend refusal (a new floor)
takes it, and so does an answer's schedule unless it cannot make the view later
(checked in O(c log c): ~1.3 us at c = 8 beyond the header's ~3 us parse; a merge
~4-7 us at 8-32 reservations, ``lpu-bench scale-out``'s ``piggyback_cost``).
A release and an observed start, twice per request, take a shorter way to the
same result when the timeline is *settled*: every started
reservation starts no earlier than the earliest slot free time it was placed on
(true by construction for predicted starts; an observed start is checked). Then

* the started reservations come before every queued one, and their starts do
  not move when one of them is removed or ends later (removing work from a FIFO
  schedule never makes a slot free later, and a slot that frees after ``now``
  is never the one a started reservation took);
* placing them FIFO leaves the ``c`` latest of their ends (a reservation always
  takes a slot that frees no later than its own end), so their part of the tail
  is read off two sorted lists of ends (admitted before and since
  ``floor_after``) in O(c log c), the floor merged in between;
* only the queued reservations are placed again: O(c log c + q log c) for q
  queued, instead of O(n log c).

An observed start (at or before ``now``) also takes the short way, earlier than predicted or
ending by ``now``, while the replica holds no more reservations than slots, none queued and no
floor binds: the rebuild then places every reservation on a never-used slot, at its own start,
so only the observed one's end moves (a stream's first token on a short shape comes after its
predicted end). Any other observed start earlier than predicted or ending by ``now``, or any
operation while the timeline is not settled, takes the full rebuild, which checks the
condition again. A property test
(``tests/unit/router/admission/test_timeline_incremental.py``) checks that the two
ways agree exactly on random operation sequences.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from lpu_protocol.artifact import Timings
from lpu_protocol.load_report import LoadReport
from router.admission import Up, always_up
from router.admission.settings import ReplicaShape

__all__ = ["RETIME_STEP", "ReplicaTimeline", "Reservation"]

_NEG_INF = float("-inf")
RETIME_STEP = 0.01
"""Relative change of an observed timing below which the timeline keeps the one in use
(:meth:`ReplicaTimeline.use_observed`): the timing in use is then at most 1 % off the latest
estimate, well inside the drift tolerance (5 % by default) that decides whether to use one."""


@dataclass(slots=True, eq=False)
class Reservation:
    """One admitted request's hold on a slot of one replica (router clock, seconds)."""

    seq: int
    admitted_at: float
    duration_s: float
    """Slot occupancy reserved: ``service_time`` of the reserved output length."""
    start: float = 0.0
    """Predicted start, or the observed one once ``observed``."""
    started: bool = False
    observed: bool = False
    """The start is known from the first token, not predicted."""
    timings: Timings | None = None
    """The timings ``duration_s`` was computed with (None: unknown, never re-timed)."""

    @property
    def end(self) -> float:
        return self.start + self.duration_s


class ReplicaTimeline:
    """Slot free times of one replica, from own reservations merged with reports.

    Every method takes ``now`` from the caller's (injected) clock; ``now`` never
    goes backwards between calls.
    """

    def __init__(self, shape: ReplicaShape, health: Up | None = None) -> None:
        self.shape = shape
        """What new reservations are scheduled with: :attr:`served`, with any timing
        :meth:`use_observed` set in place of the declared one."""
        self.served = shape
        """The shape the replica declares: the config's, its timings replaced by a report's."""
        self._observed: dict[str, float] = {}
        """Timings (``prefill_s``, ``per_token_s``) taken from observation instead."""
        self.health: Up = health if health is not None else always_up(shape.url, shape.url)
        """The replica's health, owned by the backend pool: read, never copied."""
        self.ready = True
        """False while the backend's last report said it is not ready."""
        self.last_report: LoadReport | None = None
        self.last_report_at: float | None = None
        self._items: dict[int, Reservation] = {}
        self._queue: deque[Reservation] = deque()
        self._tail: list[float] = [_NEG_INF] * shape.slots
        self._floor: list[float] | None = None
        self._floor_after = _NEG_INF
        self._ends_before: list[float] = []
        """Ends of the started reservations admitted before ``_floor_after``, ascending."""
        self._ends_since: list[float] = []
        """Ends of the started reservations admitted at or after it, ascending."""
        self._settled = True
        """Every started reservation starts no earlier than the slot it was placed on
        (see the module docstring): the shorter way is exact."""

    @property
    def url(self) -> str:
        return self.shape.url

    @property
    def healthy(self) -> bool:
        return self.health.up

    @property
    def eligible(self) -> bool:
        return self.healthy and self.ready

    @property
    def queued(self) -> int:
        """Own reservations predicted to be waiting for a slot (as of the last ``advance``)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._items)

    def advance(self, now: float) -> None:
        """Mark queued reservations whose predicted start has come as running."""
        q = self._queue
        while q and q[0].start <= now:
            r = q.popleft()
            r.started = True
            self._add_started(r)

    def poll(self, now: float) -> tuple[int, int, float]:
        """``advance(now)``, then (queued, in flight, earliest start): one call per
        replica per decision."""
        q = self._queue
        if q and q[0].start <= now:
            self.advance(now)
        first = self._tail[0]
        return len(q), len(self._items), first if first > now else now

    def earliest_start(self, now: float) -> float:
        """When a request admitted now would start (absolute, router clock)."""
        first = self._tail[0]
        return first if first > now else now

    def reserve(self, seq: int, duration_s: float, now: float) -> Reservation:
        """Place a new reservation at the end of the FIFO."""
        tail = self._tail
        start = tail[0] if tail[0] > now else now
        heapq.heapreplace(tail, start + duration_s)
        r = Reservation(seq, now, duration_s, start, start <= now, False, self.shape.timings)
        self._items[seq] = r
        if r.started:
            self._add_started(r)
        else:
            self._queue.append(r)
        return r

    def release(self, r: Reservation, now: float) -> None:
        """Remove a reservation (ended, cancelled, moved) and move later ones earlier."""
        if self._items.pop(r.seq, None) is None:
            return
        if not self._settled:
            self.rebuild(now)
            return
        if r.started:
            self._drop_started(r)
        else:
            self._queue.remove(r)
        self._place_queue(now)

    def observe_start(self, r: Reservation, start: float, now: float) -> None:
        """The request's first token showed it started at ``start``: pin it there."""
        if r.seq not in self._items:
            return
        q = self._queue
        if q and q[0].start <= now:  # what rebuild does first: a start that has come counts
            self.advance(now)
        pinned = start if start >= r.admitted_at else r.admitted_at
        # Later than predicted, on a slot that frees after now: see the module docstring.
        # Or no more reservations than slots, no binding floor, none queued: the rebuild then
        # places each on a never-used slot (it starts at its own start), so only r's end moves.
        floor = self._floor
        short = self._settled and r.started and (
            (pinned >= r.start and r.start + r.duration_s > now)
            or (pinned <= now and not q and (floor is None or floor[-1] <= now)
                and len(self._items) <= self.shape.slots))
        if short:
            self._drop_started(r)
        r.start = pinned
        r.started = r.observed = True
        if short:
            self._add_started(r)
            self._place_queue(now)
        else:
            self.rebuild(now)

    def merge_report(self, report: LoadReport, now: float, sent_at: float) -> None:
        """Take the backend's tail as the floor.

        ``report.slot_free_in_s`` is read relative to ``now`` (when it arrived),
        and reservations admitted at or after ``sent_at`` (when it was asked for)
        are counted as not yet in it: both choices err late, never early.

        Timings the backend reports that differ from the shape's (a replica serving another
        artifact version during a rollout) replace them for every later reservation (those
        admitted keep the duration they were placed with); the slot count stays the config's.
        """
        served = self.served
        if _differs(report.prefill_s, served.prefill_s) or _differs(
                report.per_token_s, served.per_token_s):
            self.served = replace(served, prefill_s=report.prefill_s,
                                  per_token_s=report.per_token_s)
            self.shape = _with_observed(self.served, self._observed)
        self.ready = report.ready
        self.last_report = report
        self.last_report_at = now
        self._take_floor(report.slot_free_in_s, now, sent_at)
        self.rebuild(now)

    def use_observed(self, timing: str, value: float | None, now: float) -> None:
        """Schedule with ``value`` as the ``timing`` (``prefill_s`` or ``per_token_s``)
        instead of the declared one (None: the declared one again); see
        :mod:`router.admission.observed`.

        Unlike a report's new timings (work admitted before a swap finishes on the old
        artifact), an observation says how this replica runs *all* its work: every live
        reservation is re-timed to the new timings (its token count kept) and the timeline
        rebuilt, so the requests already queued are predicted as they will run.

        A value within :data:`RETIME_STEP` of the one in use keeps the one in use: the
        estimate is a median that moves a little at every completed stream while a drift
        persists, and each re-timing costs O(n log c) for n live reservations (the drift
        estimator calls this once per sample of every completed stream)."""
        current = self._observed.get(timing)
        if current == value or (value is not None and current is not None
                                and abs(value - current) <= RETIME_STEP * current):
            return
        if value is None:
            del self._observed[timing]
        else:
            self._observed[timing] = value
        self.shape = _with_observed(self.served, self._observed)
        new = self.shape.timings
        for r in self._items.values():
            old = r.timings
            if old is not None and old is not new:
                decode = round((r.duration_s - old.prefill_s) / old.per_token_s)
                r.duration_s, r.timings = new.service_s(decode + 1), new
        self.rebuild(now)

    @property
    def observed_timings(self) -> dict[str, float]:
        """The timings taken from observation (empty: all as declared)."""
        return dict(self._observed)

    def merge_schedule(self, slot_free_in_s: tuple[float, ...], now: float,
                       sent_at: float) -> bool:
        """The backend's schedule from an answer (``x-lpu-schedule``), merged as a report is
        (:meth:`merge_report`: read relative to ``now``, reservations admitted at or after
        ``sent_at``, when the request was sent, unseen); returns False when it was skipped.

        Skipped when it cannot make the view later: no own reservation was admitted at or
        after ``sent_at`` and each reported free time (sorted) is no later than the tail's.
        Then the merge rule would give a tail ``max(place(all), report)``, no later per slot
        than the current one (which already holds ``place(all)``), so keeping the current
        view errs late, never early; the next ``/load`` report takes back what a finished
        request freed early. The check costs O(c log c); the merge's rebuild O(n log c).
        """
        items = self._items
        if not items or next(reversed(items.values())).admitted_at < sent_at:
            tail = sorted(self._tail)
            free = slot_free_in_s[:len(tail)]
            p = len(tail) - len(free)
            if all(now + x <= t for x, t in zip(free, tail[p:], strict=True)):
                return False
        self._take_floor(slot_free_in_s, now, sent_at)
        self.rebuild(now)
        return True

    def _take_floor(self, slot_free_in_s: tuple[float, ...], now: float,
                    sent_at: float) -> None:
        """The reported free times (relative to ``now``, ascending) as the floor."""
        c = self.shape.slots
        free = [now + x for x in slot_free_in_s[:c]]
        self._floor = [_NEG_INF] * (c - len(free)) + free
        self._floor_after = sent_at

    def refused(self, r: Reservation, start: float, now: float) -> None:
        """The backend refused ``r``'s deadline, saying it would start at ``start``.

        Drops ``r`` and raises the floor: no slot frees before ``start``; the
        reservations admitted before now were in the backend's figure.
        """
        self._items.pop(r.seq, None)
        floor = self._floor or [_NEG_INF] * self.shape.slots
        self._floor = [f if f > start else start for f in floor]
        self._floor_after = now
        self.rebuild(now)

    def rebuild(self, now: float) -> None:
        """Recompute every predicted start and the tail from scratch (the merge rule)."""
        self.advance(now)  # a start that has come is fixed, not re-predicted
        if self._floor is not None and self._floor[-1] <= now:
            self._floor = None  # entirely in the past: no longer binding
        floor = self._floor or []
        pending = bool(floor)
        heap = [_NEG_INF] * self.shape.slots
        queue = self._queue
        queue.clear()
        before: list[float] = []
        since: list[float] = []
        settled = True
        for r in self._items.values():
            if pending and r.admitted_at >= self._floor_after:
                heap = _later_per_slot(heap, floor)
                pending = False
            if r.observed:
                start = r.start
                settled = settled and start >= heap[0]
            else:
                lower = r.start if r.started else now
                start = heap[0] if heap[0] > lower else lower
            heapq.heapreplace(heap, start + r.duration_s)
            r.start = start
            r.started = start <= now
            if r.started:
                (before if r.admitted_at < self._floor_after else since).append(r.end)
            else:
                queue.append(r)
        if pending:
            heap = _later_per_slot(heap, floor)
        self._tail = heap
        before.sort()
        since.sort()
        self._ends_before, self._ends_since, self._settled = before, since, settled

    def _place_queue(self, now: float) -> None:
        """The merge rule for a settled timeline: the started reservations' part of the tail
        from their sorted ends, then the queued reservations placed FIFO on it.

        Gives what :meth:`rebuild` gives (see the module docstring), in
        O(c log c + q log c) for q queued reservations.
        """
        queue = self._queue
        if queue and queue[0].start <= now:
            self.advance(now)
        if self._floor is not None and self._floor[-1] <= now:
            self._floor = None
        c = self.shape.slots
        floor = self._floor
        since = self._ends_since
        if not queue and floor is None:
            # What the general way below gives here (light load, no binding report): the
            # latest c ends of the started reservations, padded.
            before = self._ends_before
            if not before:
                tail = since[-c:]
            elif not since:
                tail = before[-c:]
            else:
                tail = sorted(before[-c:] + since[-c:])[-c:]
            self._tail = _padded(tail, c)
            return
        heap = self._ends_before[-c:]  # ascending: a heap once padded to c
        pending = floor is not None
        if pending and since:
            assert floor is not None  # what pending means
            heap = _later_than_floor(heap, floor)
            pending = False
        heap = _with_latest(heap, since, c)
        after = self._floor_after
        replace = heapq.heapreplace  # the loop runs per queued reservation, twice per request
        for r in queue:
            if pending and r.admitted_at >= after:
                assert floor is not None  # what pending means
                heap = _later_per_slot(heap, floor)
                pending = False
            first = heap[0]
            start = first if first > now else now
            replace(heap, start + r.duration_s)
            r.start = start
            r.started = start <= now
        while queue and queue[0].started:  # FIFO starts ascend: the started lead the queue
            self._add_started(queue.popleft())
        if pending and floor is not None:
            heap = _later_per_slot(heap, floor)
        self._tail = heap

    # Twice per request each: ``r.start + r.duration_s`` is ``r.end`` without the property call.
    def _add_started(self, r: Reservation) -> None:
        insort(self._ends_before if r.admitted_at < self._floor_after else self._ends_since,
               r.start + r.duration_s)

    def _drop_started(self, r: Reservation) -> None:
        ends = self._ends_before if r.admitted_at < self._floor_after else self._ends_since
        del ends[bisect_left(ends, r.start + r.duration_s)]

    def running_busy(self, since: float, now: float, acc: float = 0.0) -> float:
        """``acc`` plus the seconds since ``since`` (or since its start, if later) that each
        running reservation has held its slot until ``now``: one pass, no generator."""
        for r in self._items.values():
            if r.started:
                acc += now - (r.start if r.start > since else since)
        return acc

    def running(self) -> Iterator[Reservation]:
        """Own reservations predicted (or seen) to hold a slot now."""
        return (r for r in self._items.values() if r.started)

    def queued_starts(self) -> Iterator[float]:
        """Predicted starts of the queued reservations (absolute, ascending)."""
        return (r.start for r in self._queue)

    def ends(self) -> Iterator[float]:
        """Predicted ends of own reservations, running and queued (absolute)."""
        return (r.end for r in self._items.values())

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain-data view for ``GET /admin/buckets``; times relative to ``now``."""
        free = sorted(max(0.0, t - now) for t in self._tail)
        report: dict[str, Any] | None = None
        if self.last_report is not None and self.last_report_at is not None:
            lr = self.last_report
            report = {
                "age_s": now - self.last_report_at,
                "running": lr.running,
                "waiting": lr.waiting,
                "slot_free_in_s": list(lr.slot_free_in_s),
            }
        wait = free[0]
        return {
            "url": self.url,
            "healthy": self.healthy,
            "ready": self.ready,
            "slots": self.shape.slots,
            "slot_free_in_s": free,
            "reserved": len(self._items),
            "running": len(self._items) - len(self._queue),
            "queued": len(self._queue),
            "predicted_wait_s": wait,
            "predicted_ttft_s": wait + self.shape.prefill_s,
            "timings": {"prefill_s": self.shape.prefill_s,
                        "per_token_s": self.shape.per_token_s,
                        "observed": sorted(self._observed)},
            "report": report,
        }


def _with_observed(served: ReplicaShape, observed: dict[str, float]) -> ReplicaShape:
    """``served`` with the observed timings in place of its own (itself when none)."""
    if not observed:
        return served
    # Built field by field, not by dataclasses.replace (which reads the fields' metadata on
    # every call: 22k against 14k instructions, once per re-timing); the test that the
    # shape's init fields are these four keeps a new field from being dropped here.
    return ReplicaShape(served.url, served.slots,
                        observed.get("prefill_s", served.prefill_s),
                        observed.get("per_token_s", served.per_token_s))


def _padded(ends: list[float], c: int) -> list[float]:
    """``ends`` (ascending, at most ``c``) with never-used slots in front: a sorted tail."""
    return ends if len(ends) == c else [_NEG_INF] * (c - len(ends)) + ends


def _with_latest(ends: list[float], more: list[float], c: int) -> list[float]:
    """The ``c`` latest of ``ends`` (ascending, at most ``c``; a list this may reuse) and
    ``more`` (ascending), padded with never-used slots: a heap.

    Since the last report ``more`` holds a few ends: each is pushed (O(log c) apiece); many
    are merged by sorting. Both keep the same values."""
    if len(more) > 8:
        return _padded(sorted(ends + more[-c:])[-c:], c)
    heap = _padded(ends, c)
    replace = heapq.heapreplace
    for e in more:
        if e > heap[0]:
            replace(heap, e)
    return heap


def _later_than_floor(ends: list[float], floor: list[float]) -> list[float]:
    """:func:`_later_per_slot` of ``_padded(ends, len(floor))`` for ascending ``ends``:
    the same list, without sorting what is sorted or comparing never-used slots (each takes
    the floor's value), twice per request while a report's floor binds."""
    p = len(floor) - len(ends)
    return floor[:p] + [a if a > b else b for a, b in zip(ends, floor[p:], strict=True)]


def _later_per_slot(heap: list[float], floor: list[float]) -> list[float]:
    """Per slot the later of two free-time vectors, both taken in ascending order.

    The result is sorted, so it is a valid heap as it stands.
    """
    return [a if a > b else b for a, b in zip(sorted(heap), floor, strict=True)]


def _differs(reported: float, configured: float) -> bool:
    """A reported timing that is not the configured one: beyond float rounding (the router
    scales the config's milliseconds, the backend its own), so equal shapes stay put."""
    return reported > 0 and abs(reported - configured) > 1e-9 * max(reported, configured)
