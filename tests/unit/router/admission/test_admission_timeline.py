"""ReplicaTimeline: exact FIFO slot schedules on a virtual clock."""

from __future__ import annotations

import pytest

from lpu_protocol.load_report import LoadReport
from router.admission.settings import ReplicaShape
from router.admission.timeline import ReplicaTimeline

# 2 slots; a request of 11 tokens holds a slot 0.1 + 10 * 0.01 = 0.2 s.
SHAPE = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
D = SHAPE.service_time(11)


def _starts(n: int, now: float = 0.0) -> list[float]:
    tl = ReplicaTimeline(SHAPE)
    return [round(tl.reserve(i, D, now).start, 9) for i in range(n)]


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [0.0]), (2, [0.0, 0.0]), (3, [0.0, 0.0, 0.2]), (5, [0.0, 0.0, 0.2, 0.2, 0.4])],
    ids=["one", "fills-slots", "first-queued", "two-deep"],
)
def test_fifo_starts_for_a_burst(n: int, expected: list[float]) -> None:
    assert _starts(n) == expected


def test_earliest_start_and_queue_counts_follow_the_clock() -> None:
    tl = ReplicaTimeline(SHAPE)
    for i in range(5):
        tl.reserve(i, D, 0.0)
    assert tl.earliest_start(0.0) == pytest.approx(0.4)
    assert (tl.queued, tl.in_flight) == (3, 5)
    tl.advance(0.25)
    assert tl.queued == 1  # the two started at 0.2 now run
    tl.advance(0.4)
    assert tl.queued == 0
    assert tl.earliest_start(0.7) == 0.7  # everything ended by 0.6


def test_early_completion_moves_queued_work_earlier() -> None:
    tl = ReplicaTimeline(SHAPE)
    rs = [tl.reserve(i, D, 0.0) for i in range(4)]
    tl.release(rs[0], 0.05)  # ended after 0.05 s instead of 0.2 s
    assert rs[2].start == pytest.approx(0.05)
    assert rs[3].start == pytest.approx(0.2)
    assert sorted(round(t, 9) for t in tl.snapshot(0.05)["slot_free_in_s"]) == [0.2, 0.35]


def test_cancelling_a_queued_request_moves_the_ones_behind_it() -> None:
    tl = ReplicaTimeline(SHAPE)
    rs = [tl.reserve(i, D, 0.0) for i in range(5)]
    tl.release(rs[2], 0.01)  # cancelled while waiting: it never held a slot
    assert [round(r.start, 9) for r in (rs[3], rs[4])] == [0.2, 0.2]
    assert tl.earliest_start(0.01) == pytest.approx(0.4)


def test_started_requests_keep_their_start_on_rebuild() -> None:
    tl = ReplicaTimeline(SHAPE)
    rs = [tl.reserve(i, D, 0.0) for i in range(3)]
    tl.release(rs[0], 0.3)  # r2 started at 0.2 when r0 ended as predicted
    assert rs[2].started and rs[2].start == pytest.approx(0.2)


def test_observed_start_pins_a_late_request() -> None:
    tl = ReplicaTimeline(SHAPE)
    rs = [tl.reserve(i, D, 0.0) for i in range(3)]
    tl.observe_start(rs[0], 0.05, 0.15)  # first token at 0.15: it started 0.05 late
    assert rs[0].end == pytest.approx(0.25)
    assert rs[2].start == pytest.approx(0.2)  # the other slot still frees first
    tl.observe_start(rs[1], 0.1, 0.2)
    assert rs[2].start == pytest.approx(0.25)


def _report(*free: float, running: int = 2) -> LoadReport:
    return LoadReport(2, running, 0, free, 0.1, 0.01)


def test_report_floor_counts_other_routers_work() -> None:
    tl = ReplicaTimeline(SHAPE)
    tl.merge_report(_report(0.3, 0.5), now=1.0, sent_at=1.0)
    r = tl.reserve(0, D, 1.0)
    assert r.start == pytest.approx(1.3)
    assert tl.earliest_start(1.0) == pytest.approx(1.5)


def test_own_work_seen_by_the_report_is_not_counted_twice() -> None:
    tl = ReplicaTimeline(SHAPE)
    tl.reserve(0, D, 0.0)  # runs 0 .. 0.2
    # The backend saw it (and another router's request running until 0.15).
    tl.merge_report(_report(0.1, 0.15), now=0.05, sent_at=0.04)
    # Per slot the later of own [-inf, 0.2] and reported [0.15, 0.2].
    assert tl.earliest_start(0.05) == pytest.approx(0.15)


def test_own_work_admitted_after_the_poll_is_added_on_top() -> None:
    tl = ReplicaTimeline(SHAPE)
    tl.reserve(0, D, 0.05)  # admitted after the poll was sent at 0.04
    tl.merge_report(_report(0.1, 0.15), now=0.05, sent_at=0.04)
    # Reported [0.15, 0.2], then own request placed at 0.15 -> [0.2, 0.35].
    assert tl.earliest_start(0.05) == pytest.approx(0.2)


def test_report_floor_expires_once_in_the_past() -> None:
    tl = ReplicaTimeline(SHAPE)
    tl.merge_report(_report(0.3, 0.5), now=0.0, sent_at=0.0)
    tl.rebuild(0.6)
    assert tl.earliest_start(0.6) == 0.6


def test_short_report_pads_free_slots_and_not_ready_is_kept() -> None:
    tl = ReplicaTimeline(SHAPE)
    tl.merge_report(LoadReport(2, 1, 0, (0.4,), 0.1, 0.01, ready=False), 0.0, 0.0)
    assert tl.earliest_start(0.0) == 0.0
    assert not tl.eligible


def test_backend_refusal_raises_every_slot() -> None:
    tl = ReplicaTimeline(SHAPE)
    r = tl.reserve(0, D, 0.0)
    tl.refused(r, start=0.7, now=0.0)
    assert tl.in_flight == 0
    assert tl.earliest_start(0.0) == pytest.approx(0.7)
