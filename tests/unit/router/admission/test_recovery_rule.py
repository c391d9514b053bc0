"""Recovery after overload on a virtual clock: the utilization guard never refuses a request
that can start at once, and a request retried exactly at its ``Retry-After`` is admitted.

An exact backend (FIFO over its slots, each request holding its slot for ``service_time``,
first token after the prefill) serves a burst at 5x the bucket's capacity; the controller hears
of every first token and completion when it happens. Then, on a fresh replay for each row, one
probe comes at a given offset after the burst: it must be admitted when the timeline can start
it at once, and when refused, the same request sent again at exactly its ``Retry-After`` (no
other load meanwhile) must be admitted.
"""

from __future__ import annotations

import heapq

import pytest

from router.admission import AdmissionRequest, Decision, Priority
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, MarginPolicy, ReplicaShape
from router.outcomes import Outcome, RejectReason

# 2 slots; 11 tokens hold a slot 0.1 + 10 * 0.01 = 0.2 s: capacity 10 requests/s.
SHAPE = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
TOKENS = 11
SERVICE_S = SHAPE.service_time(TOKENS)
CAPACITY = SHAPE.slots / SERVICE_S
BURST_S = 2.0
MARGIN_S = 0.005
# A low target and a window shorter than the burst, so the burst leaves the guard's window
# far above every class's threshold.
POLICY = BucketPolicy("short", (SHAPE,), ttft_slo_s=0.5, target_utilization=0.5)
SETTINGS = AdmissionSettings(buckets=(POLICY,), margin=MarginPolicy.FIXED, margin_s=MARGIN_S,
                             utilization_window_s=1.0, min_retry_after_s=0.01)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ExactBackend:
    """The backend's own schedule: FIFO over the slots; tells the ticket of each first token
    and completion at the time it happens (the router's clock is the backend's here)."""

    def __init__(self, admitter: TimelineAdmitter, clock: Clock) -> None:
        self.admitter = admitter
        self.clock = clock
        self._free = [0.0] * SHAPE.slots
        self._events: list[tuple[float, int, str, Decision]] = []
        self._n = 0

    def send(self, req: AdmissionRequest) -> Decision:
        d = self.admitter.decide(req)
        if d.admitted:
            start = max(self.clock.t, heapq.heappop(self._free))
            heapq.heappush(self._free, start + SERVICE_S)
            self._event(start + SHAPE.prefill_s, "first", d)
            self._event(start + SERVICE_S, "end", d)
        return d

    def _event(self, at: float, kind: str, d: Decision) -> None:
        self._n += 1
        heapq.heappush(self._events, (at, self._n, kind, d))

    def run_until(self, t: float) -> None:
        while self._events and self._events[0][0] <= t:
            at, _, kind, d = heapq.heappop(self._events)
            self.clock.t = at
            assert d.ticket is not None
            if kind == "first":
                d.ticket.first_token()
            else:
                d.ticket.finish(Outcome.COMPLETED, TOKENS)
        self.clock.t = max(self.clock.t, t)

    def drained_at(self) -> float:
        """When the backend's last slot frees (its own schedule)."""
        return max(self._free)


def _req(priority: Priority) -> AdmissionRequest:
    return AdmissionRequest("short", prompt_tokens=10, max_tokens=TOKENS, priority=priority)


def _after_burst(burst_class: Priority) -> tuple[TimelineAdmitter, ExactBackend, float]:
    """Replay the burst: 5x capacity, evenly spaced, for ``BURST_S``; returns the backend's
    drain time."""
    clock = Clock()
    admitter = TimelineAdmitter(SETTINGS, clock=clock)
    backend = ExactBackend(admitter, clock)
    gap = 1.0 / (5 * CAPACITY)
    for i in range(round(BURST_S / gap)):
        backend.run_until(i * gap)
        backend.send(_req(burst_class))
    return admitter, backend, backend.drained_at()


def _settled(admitter: TimelineAdmitter, backend: ExactBackend) -> None:
    backend.run_until(backend.clock.t + 10.0)
    snap = admitter.snapshot()["buckets"]["short"]
    assert (snap["in_flight"], snap["queue_depth"]) == (0, 0)  # every admitted ticket ended


# Offsets of the probe from the end of the burst (seconds): inside the backlog, around the
# moment it drains (~0.5 s later: the queue holds one SLO of work), and after it.
OFFSETS = (0.0, 0.013, 0.05, 0.1, 0.2, 0.3, 0.39, 0.45, 0.49, 0.5, 0.51, 0.55, 0.7, 1.0)


@pytest.mark.parametrize("offset", OFFSETS, ids=[f"+{o * 1e3:.0f}ms" for o in OFFSETS])
@pytest.mark.parametrize(
    ("burst_class", "probe_class"),
    [(Priority.INTERACTIVE, Priority.STANDARD), (Priority.INTERACTIVE, Priority.BATCH),
     (Priority.STANDARD, Priority.BATCH)],
    ids=["interactive-then-standard", "interactive-then-batch", "standard-then-batch"],
)
def test_after_a_burst_a_free_slot_admits_and_retry_after_is_kept(
    burst_class: Priority, probe_class: Priority, offset: float
) -> None:
    admitter, backend, drained = _after_burst(burst_class)
    backend.run_until(BURST_S + offset)
    d = backend.send(_req(probe_class))
    if backend.clock.t >= drained:
        assert d.admitted, (d.reason, d.message)  # the backend is idle
    if not d.admitted:
        assert d.predicted_wait_s > MARGIN_S, (d.reason, d.message)  # it would have queued
        assert d.reason in (RejectReason.SLO_TTFT, RejectReason.UTILIZATION)
        assert d.retry_after_s is not None
        backend.run_until(backend.clock.t + d.retry_after_s)
        again = backend.send(_req(probe_class))
        assert again.admitted, (d.reason, d.retry_after_s, again.reason, again.message)
    _settled(admitter, backend)


def test_the_burst_leaves_the_window_above_every_threshold() -> None:
    # What makes the table above bite: after the burst the guard's window is full, so any
    # request that would queue is shed for utilization, and stays so until its slot frees.
    admitter, backend, drained = _after_burst(Priority.INTERACTIVE)
    assert drained > BURST_S + 0.3
    backend.run_until(BURST_S + 0.2)  # the wait is now within the SLO
    snap = admitter.snapshot()["buckets"]["short"]
    assert snap["utilization"] == pytest.approx(1.0)
    d = backend.send(_req(Priority.STANDARD))
    assert d.reason == RejectReason.UTILIZATION
    assert d.retry_after_s == pytest.approx(d.predicted_wait_s)  # when its slot frees
    _settled(admitter, backend)


def test_a_shorter_retry_would_be_refused_again() -> None:
    # Retry-After is not padded beyond the margin: half a margin earlier, the request still
    # finds its slot taken and the guard shut.
    admitter, backend, _ = _after_burst(Priority.INTERACTIVE)
    backend.run_until(BURST_S + 0.2)
    d = backend.send(_req(Priority.STANDARD))
    assert d.reason == RejectReason.UTILIZATION and d.retry_after_s is not None
    backend.run_until(backend.clock.t + d.retry_after_s - MARGIN_S - 0.001)
    early = backend.send(_req(Priority.STANDARD))
    assert early.reason == RejectReason.UTILIZATION
    _settled(admitter, backend)

