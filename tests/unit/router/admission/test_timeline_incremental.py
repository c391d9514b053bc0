"""The timeline's short way (release and observed start without a full rebuild) gives exactly
what the merge rule from scratch gives, for random operation sequences."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lpu_protocol.load_report import LoadReport
from router.admission.settings import ReplicaShape
from router.admission.timeline import ReplicaTimeline, Reservation

SHAPE = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)


class FromScratch(ReplicaTimeline):
    """The reference: every release and observed start rebuilds the whole timeline."""

    def release(self, r: Reservation, now: float) -> None:
        if self._items.pop(r.seq, None) is not None:
            self.rebuild(now)

    def observe_start(self, r: Reservation, start: float, now: float) -> None:
        if r.seq not in self._items:
            return
        r.start = max(start, r.admitted_at)
        r.started = r.observed = True
        self.rebuild(now)


def _state(tl: ReplicaTimeline, held: dict[int, Reservation], live: list[int],
           now: float) -> dict[str, Any]:
    """Everything a reader can see, exactly (no rounding)."""
    return {
        "reservations": [(held[s].start, held[s].started, held[s].observed) for s in live],
        "queued_starts": list(tl.queued_starts()),
        "snapshot": tl.snapshot(now),
        "tail": sorted(tl._tail),  # stricter than readers need: also the slots free by now
        "poll": tl.poll(now),
    }


_SECONDS = st.sampled_from([0.0, 0.004, 0.02, 0.05, 0.1, 0.2, 0.45])
_RESERVE = st.tuples(st.just("reserve"), st.sampled_from([0.1, 0.13, 0.2, 0.2, 0.35, 0.6]))
_OBSERVE = st.tuples(st.just("observe"), st.integers(0, 40),
                     st.sampled_from([-0.3, -0.05, 0.0, 0.0, 0.001, 0.01, 0.05]))
# Reservations outnumber the rest, so that queues form behind the slots.
_OP = st.one_of(
    _RESERVE, _RESERVE, _RESERVE, _RESERVE, _RESERVE,
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.001, 0.01, 0.03, 0.1, 0.3])),
    st.tuples(st.just("tick"), st.sampled_from([0.001, 0.01])),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("release"), st.just(0)),  # the oldest: FIFO completion
    _OBSERVE, _OBSERVE,
    st.tuples(st.just("report"), st.lists(_SECONDS, min_size=0, max_size=3), _SECONDS),
    st.tuples(st.just("refused"), st.integers(0, 40), _SECONDS),
    st.tuples(st.just("advance")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_OP, min_size=20, max_size=80))
def test_short_way_equals_the_rebuild_from_scratch(ops: list[tuple[Any, ...]]) -> None:
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
        elif kind == "advance":
            fast.advance(now)
            ref.advance(now)
        elif kind == "report":
            free = tuple(sorted(op[1]))
            report = LoadReport(SHAPE.slots, len(free), 0, free, 0.1, 0.01)
            sent = max(0.0, now - op[2])
            fast.merge_report(report, now, sent)
            ref.merge_report(report, now, sent)
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


def _both(slots: int) -> tuple[ReplicaTimeline, FromScratch]:
    shape = ReplicaShape("http://r0", slots=slots, prefill_s=0.1, per_token_s=0.01)
    return ReplicaTimeline(shape), FromScratch(shape)


def test_a_start_observed_after_its_predicted_end_moves_the_one_behind_it() -> None:
    # One slot: r0 [0, 0.2], r1 from 0.2. At 0.25 r0's first token says it started at 0.03,
    # so it ends at 0.23 and r1, started on r0's slot, started at 0.23.
    for tl in _both(1):
        r0, r1 = tl.reserve(0, 0.2, 0.0), tl.reserve(1, 0.2, 0.0)
        tl.advance(0.25)
        tl.observe_start(r0, 0.03, 0.25)
        assert (r1.start, r1.started) == (0.23, True)


def test_a_start_observed_earlier_than_predicted_keeps_its_own_end() -> None:
    # Two slots: r0 [0, 0.3], r1 [0, 0.5], r2 predicted on r0's slot at 0.3; its first token
    # shows it started at once (the backend had room the timeline did not know of).
    fast, ref = _both(2)
    for tl in (fast, ref):
        tl.reserve(0, 0.3, 0.0)
        tl.reserve(1, 0.5, 0.0)
        r2 = tl.reserve(2, 0.1, 0.0)
        tl.advance(0.35)
        tl.observe_start(r2, 0.0, 0.35)
    assert sorted(fast._tail) == sorted(ref._tail) == [0.1, 0.5]


def test_a_first_token_after_the_predicted_end_on_a_roomy_replica_moves_only_its_end() -> None:
    # Four slots, two reservations: both on never-used slots. r0 [0, 0.2]'s first token at 0.35
    # says it started at 0.25 (after its predicted end), r1's that it started at its admission.
    fast, ref = _both(4)
    for tl in (fast, ref):
        r0, r1 = tl.reserve(0, 0.2, 0.0), tl.reserve(1, 0.2, 0.01)
        tl.observe_start(r0, 0.25, 0.35)
        tl.observe_start(r1, 0.0, 0.35)
        assert (r0.start, r1.start) == (0.25, 0.01)
    never = -float("inf")
    assert sorted(fast._tail) == sorted(ref._tail) == [never, never, 0.01 + 0.2, 0.25 + 0.2]
    assert fast.poll(0.35) == ref.poll(0.35) == (0, 2, 0.35)
