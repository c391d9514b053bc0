"""The exact FIFO schedule, on a virtual clock."""

from __future__ import annotations

import heapq
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpu_emulator.engine import Engine, JobState
from lpu_protocol.artifact import Artifact, builtin_artifact

BASE = builtin_artifact("llama-3.1-8b-2k")


def artifact(slots: int, prefill_s: float = 0.1, per_token_s: float = 0.002) -> Artifact:
    return replace(BASE, slots=slots, prefill_s=prefill_s, per_token_s=per_token_s)


def test_five_simultaneous_requests_on_one_slot_get_first_tokens_on_schedule() -> None:
    art = artifact(1)
    engine = Engine(art)
    n = 50
    service = art.service_time(n)
    jobs = [engine.submit(10.0, n) for _ in range(5)]
    assert [j.state for j in jobs] == [JobState.RUNNING] + [JobState.WAITING] * 4
    # A late driver (advance called long after each start) changes nothing.
    t = 10.0
    for i, job in enumerate(jobs):
        assert job.start == pytest.approx(10.0 + i * service, abs=1e-12)
        assert job.token_time(0) == pytest.approx(10.0 + i * service + art.prefill_s, abs=1e-12)
        t = job.start + 0.0371
        engine.advance(t)
        assert job.state is JobState.RUNNING
        assert job.start == pytest.approx(10.0 + i * service, abs=1e-12)
    engine.advance(t + 10)
    assert all(j.state is JobState.DONE for j in jobs)
    assert engine.busy_s == pytest.approx(5 * service)


@pytest.mark.parametrize(
    ("slots", "expected_starts"),
    [(1, [0.0, 1.0, 2.0, 3.0]), (2, [0.0, 0.0, 1.0, 1.0]), (4, [0.0, 0.0, 0.0, 0.0])],
    ids=["one-slot", "two-slots", "four-slots"],
)
def test_fifo_starts_fill_the_earliest_free_slot(slots: int, expected_starts: list[float]) -> None:
    art = artifact(slots, prefill_s=0.5, per_token_s=0.1)  # service(6) = 1.0 s
    engine = Engine(art)
    jobs = [engine.submit(0.0, 6) for _ in range(4)]
    assert [j.start for j in jobs] == pytest.approx(expected_starts)


def test_projection_and_snapshot() -> None:
    art = artifact(2, prefill_s=0.5, per_token_s=0.1)
    engine = Engine(art)
    assert engine.projected_ttft(0.0) == pytest.approx(0.5)
    assert not engine.would_wait(0.0)
    engine.submit(0.0, 6)  # slot A free at 1.0
    engine.submit(0.2, 11)  # slot B free at 0.2 + 1.5 = 1.7
    engine.submit(0.3, 6)  # waits for A: 1.0 .. 2.0
    assert engine.would_wait(0.4)
    assert engine.projected_ttft(0.4) == pytest.approx(1.7 - 0.4 + 0.5)
    snap = engine.snapshot(0.4)
    assert (snap.slots, snap.running, snap.waiting) == (2, 2, 1)
    assert snap.slot_free_in_s == pytest.approx((1.3, 1.6))
    snap = engine.snapshot(1.2)
    assert (snap.running, snap.waiting) == (2, 0)
    assert snap.slot_free_in_s == pytest.approx((0.5, 0.8))
    assert engine.snapshot(5.0).slot_free_in_s == (0.0, 0.0)


def test_cancel_running_frees_the_slot_now_and_the_next_starts_then() -> None:
    art = artifact(1, prefill_s=0.5, per_token_s=0.1)
    engine = Engine(art)
    first = engine.submit(0.0, 6)
    second = engine.submit(0.0, 6)
    third = engine.submit(0.0, 6)
    assert (second.start, third.start) == pytest.approx((1.0, 2.0))
    admitted = engine.cancel(first, 0.25)
    assert admitted == [second]
    assert first.state is JobState.CANCELLED
    assert first.end == pytest.approx(0.25)
    assert second.start == pytest.approx(0.25)
    assert third.start == pytest.approx(1.25)
    assert engine.busy_s == pytest.approx(0.25)
    assert engine.cancelled == 1


def test_cancel_queued_moves_later_requests_earlier() -> None:
    art = artifact(1, prefill_s=0.5, per_token_s=0.1)
    engine = Engine(art)
    engine.submit(0.0, 6)
    second = engine.submit(0.1, 6)
    third = engine.submit(0.2, 6)
    assert engine.cancel(second, 0.3) == []
    assert engine.waiting == 1
    assert third.start == pytest.approx(1.0)
    assert engine.projected_start(0.3) == pytest.approx(2.0)


def test_cancel_after_the_end_changes_nothing() -> None:
    engine = Engine(artifact(1, prefill_s=0.5, per_token_s=0.1))
    job = engine.submit(0.0, 6)
    engine.cancel(job, 3.0)
    assert job.state is JobState.DONE
    assert engine.cancelled == 0
    assert engine.completed == 1


@pytest.mark.parametrize(
    ("now", "due"),
    [(0.49, 0), (0.5, 1), (0.55, 1), (0.6, 2), (0.99, 5), (1.0, 6), (9.0, 6)],
    ids=["before", "first", "between", "second", "almost-all", "all", "long-after"],
)
def test_tokens_due(now: float, due: int) -> None:
    engine = Engine(artifact(1, prefill_s=0.5, per_token_s=0.1))
    job = engine.submit(0.0, 6)
    assert job.tokens_due(now + 1e-9) == due


def _reference_starts(
    slots: int, arrivals: list[float], services: list[float]
) -> list[float]:
    """FIFO with ``slots`` servers, by the textbook recursion (no cancellations)."""
    free = [0.0] * slots
    starts = []
    for a, s in zip(arrivals, services, strict=True):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        starts.append(start)
    return starts


@settings(max_examples=60, deadline=None)
@given(
    slots=st.integers(1, 4),
    reqs=st.lists(
        st.tuples(st.floats(0, 0.5), st.integers(1, 40), st.booleans()), min_size=1, max_size=25
    ),
)
def test_matches_fifo_recursion_with_lazy_driver(
    slots: int, reqs: list[tuple[float, int, bool]]
) -> None:
    art = artifact(slots, prefill_s=0.05, per_token_s=0.01)
    engine = Engine(art)
    t = 0.0
    arrivals, services, jobs = [], [], []
    for gap, n, poke in reqs:
        t += gap
        if poke:  # a driver wake-up at an arbitrary moment
            engine.advance(t - gap / 2)
        jobs.append(engine.submit(t, n))
        arrivals.append(t)
        services.append(art.service_time(n))
    engine.advance(t + 100)
    expected = _reference_starts(slots, arrivals, services)
    assert [j.start for j in jobs] == pytest.approx(expected)
    assert engine.running == 0 and engine.waiting == 0


@settings(max_examples=60, deadline=None)
@given(
    slots=st.integers(1, 3),
    reqs=st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=2, max_size=15),
    cancel_at=st.floats(0.0, 1.0),
)
def test_after_a_cancellation_the_queue_is_replaced_as_if_fresh(
    slots: int, reqs: list[tuple[int, bool]], cancel_at: float
) -> None:
    art = artifact(slots, prefill_s=0.05, per_token_s=0.01)
    engine = Engine(art)
    jobs = [engine.submit(0.0, n) for n, _ in reqs]
    victims = [j for j, (_, cancel) in zip(jobs, reqs, strict=True) if cancel]
    engine.advance(cancel_at)
    for job in victims:
        engine.cancel(job, cancel_at)
    # Reference: the jobs still waiting start FIFO from the slots' free times.
    waiting = [j for j in jobs if j.state is JobState.WAITING]
    running_ends = [j.end for j in jobs if j.state is JobState.RUNNING]
    free = running_ends + [cancel_at] * (slots - len(running_ends))
    heapq.heapify(free)
    for job in waiting:
        start = max(cancel_at, heapq.heappop(free))
        assert job.start == pytest.approx(start)
        heapq.heappush(free, start + job.service_s)
    assert engine.projected_start(cancel_at) == pytest.approx(max(cancel_at, min(free)))
