"""An answer's schedule (``x-lpu-schedule``) merged into a replica's timeline: the merge rule of
``/load``, skipped only when it cannot make the view later, and the short way still exact."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_timeline_incremental import _OP, FromScratch, _state

from lpu_protocol.load_report import ScheduleReport
from router.admission import AdmissionRequest, Admitted
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.admission.timeline import ReplicaTimeline, Reservation
from router.metrics import make_metrics

SHAPE = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
ONE = ReplicaShape("http://r1", slots=1, prefill_s=0.1, per_token_s=0.01)

_SECONDS = st.sampled_from([0.0, 0.004, 0.02, 0.05, 0.1, 0.2, 0.45, 0.9])
_SCHEDULE = st.tuples(st.just("schedule"), st.lists(_SECONDS, min_size=2, max_size=2),
                      st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2]))
_OPS = st.lists(st.one_of(_OP, _SCHEDULE, _SCHEDULE), min_size=20, max_size=80)


def _merged_fully(tl: ReplicaTimeline, free: tuple[float, ...], now: float,
                  sent: float) -> ReplicaTimeline:
    """What the merge rule gives, never skipped: on a copy."""
    other = copy.deepcopy(tl)
    other._take_floor(free, now, sent)
    other.rebuild(now)
    return other


def _run(ops: list[tuple[Any, ...]], check: Any) -> None:
    fast, ref = ReplicaTimeline(SHAPE), FromScratch(SHAPE)
    live: list[int] = []
    mine: dict[int, Reservation] = {}
    theirs: dict[int, Reservation] = {}
    now, seq = 0.0, 0
    for op in ops:
        kind = op[0]
        if kind == "tick":
            now += op[1]
        elif kind == "reserve":
            mine[seq], theirs[seq] = fast.reserve(seq, op[1], now), ref.reserve(seq, op[1], now)
            live.append(seq)
            seq += 1
        elif kind == "schedule":
            free, sent = tuple(sorted(op[1])), max(0.0, now - op[2])
            check(fast, free, now, sent)
            assert fast.merge_schedule(free, now, sent) == ref.merge_schedule(free, now, sent)
        elif kind in ("advance", "report"):
            fast.advance(now)
            ref.advance(now)
        elif live:
            s = live[op[1] % len(live)]
            if kind == "release":
                live.remove(s)
                fast.release(mine[s], now)
                ref.release(theirs[s], now)
            elif kind == "observe":
                start = now - SHAPE.prefill_s + op[2]
                fast.observe_start(mine[s], start, now)
                ref.observe_start(theirs[s], start, now)
            else:
                live.remove(s)
                fast.refused(mine[s], now + op[2], now)
                ref.refused(theirs[s], now + op[2], now)
        assert _state(fast, mine, live, now) == _state(ref, theirs, live, now), op


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_short_way_still_equals_the_rebuild_with_answers_merged(ops: list[tuple[Any, ...]]
                                                                ) -> None:
    _run(ops, lambda *_: None)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_a_skipped_merge_leaves_a_view_no_earlier_than_the_merge(ops: list[tuple[Any, ...]]
                                                                 ) -> None:
    # The tail is what a new request is placed on: never earlier than the merge's.
    def check(tl: ReplicaTimeline, free: tuple[float, ...], now: float, sent: float) -> None:
        full = _merged_fully(tl, free, now, sent)
        kept = copy.deepcopy(tl)
        if not kept.merge_schedule(free, now, sent):
            assert all(a >= b for a, b in zip(sorted(kept._tail), sorted(full._tail),
                                                strict=True))
            assert kept.earliest_start(now) >= full.earliest_start(now)
    _run(ops, check)


def test_another_routers_work_in_the_answer_moves_later_reservations() -> None:
    # One slot. This router admits r1 at 0 (5 s) and r2 at 1 (5 s): it predicts r2 at [5, 10].
    # r1's answer (sent just after its admission at 0, so it holds r1) arrives at 1: the
    # backend ran another router's 3 s job first, so its slot frees 7 s later, r1 included:
    # r2 goes to [8, 13].
    tl = ReplicaTimeline(ONE)
    tl.reserve(0, 5.0, 0.0)
    r2 = tl.reserve(1, 5.0, 1.0)
    assert (r2.start, tl.earliest_start(1.0)) == (5.0, 10.0)
    assert tl.merge_schedule((7.0,), 1.0, math.nextafter(0.0, 1.0))
    assert (r2.start, tl.earliest_start(1.0)) == (8.0, 13.0)


def test_an_answer_that_adds_nothing_is_skipped() -> None:
    # The backend holds exactly this router's work: r1 [0, 5], r2 [5, 10]; r2's answer (sent
    # at 1) says the slot frees in 9 s at 1.0: what the router knows. Nothing changes.
    tl = ReplicaTimeline(ONE)
    tl.reserve(0, 5.0, 0.0)
    r2 = tl.reserve(1, 5.0, 1.0)
    after_r2 = math.nextafter(1.0, 2.0)
    assert not tl.merge_schedule((9.0,), 1.0, after_r2)
    assert (r2.start, tl.earliest_start(1.0)) == (5.0, 10.0)
    # One second later than the router knows: merged.
    assert tl.merge_schedule((10.0,), 1.0, after_r2)
    assert tl.earliest_start(1.0) == 11.0


def test_a_reservation_after_the_send_is_never_skipped_over() -> None:
    # r2 was admitted after r1's request was sent: the answer cannot hold it, so it is merged
    # even when every reported time is within the tail.
    tl = ReplicaTimeline(ONE)
    tl.reserve(0, 5.0, 0.0)
    tl.reserve(1, 5.0, 1.0)
    assert tl.merge_schedule((4.0,), 1.0, 0.5)
    assert tl.earliest_start(1.0) == 10.0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _admitter(on: bool, registry: CollectorRegistry) -> tuple[TimelineAdmitter, _Clock]:
    clock = _Clock()
    bucket = BucketPolicy("b", (ONE,), ttft_slo_s=10.0, e2e_slo_s=60.0)
    settings = AdmissionSettings(buckets=(bucket,), schedule_from_answers=on)
    return TimelineAdmitter(settings, clock=clock, metrics=make_metrics(registry)), clock


def _results(registry: CollectorRegistry) -> dict[str, float]:
    return {r: registry.get_sample_value("lpu_router_schedule_reports_total", {"result": r})
            or 0.0 for r in ("merged", "skipped", "invalid")}


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
def test_a_ticket_merges_its_answers_schedule_unless_switched_off(on: bool) -> None:
    registry = CollectorRegistry()
    a, clock = _admitter(on, registry)
    d = a.decide(AdmissionRequest("b", prompt_tokens=10, max_tokens=10))
    assert isinstance(d, Admitted)
    clock.t = 0.001
    d.ticket.schedule("1;1;0;bogus")  # a hostile backend: ignored
    # The backend says its slot frees in 2 s: another router's work is ahead of this request.
    d.ticket.schedule(ScheduleReport(1, 1, 1, (2.0,)).to_header())
    start = a.snapshot()["buckets"]["b"]["replicas"][0]["slot_free_in_s"][0]
    if on:
        assert start == pytest.approx(2.0)
        assert _results(registry) == {"merged": 1.0, "skipped": 0.0, "invalid": 1.0}
    else:
        assert start < 1.0  # its own reservation only
        assert _results(registry) == {"merged": 0.0, "skipped": 0.0, "invalid": 0.0}
