"""The engine's retirement of ended jobs (a heap of ends) against the pass over every slot it
replaced: on random submits, cancellations and wake-ups the two agree exactly (states, the
slot-seconds float ``busy_s`` bit for bit, counts, snapshots)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from lpu_emulator.engine import Engine, Job, JobState
from lpu_protocol.artifact import Artifact, builtin_artifact

ART = replace(builtin_artifact("llama-3.1-8b-2k"), prefill_s=0.05, per_token_s=0.01)


class PassEngine:
    """The engine as it was: running jobs in a list, every call a pass over them (the
    oracle; only what the comparison needs)."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._free = [-math.inf] * artifact.slots
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._next_id = 0
        self.busy_s = 0.0
        self.completed = 0
        self.cancelled = 0

    def submit(self, now: float, n: int) -> Job:
        self.advance(now)
        service = self.artifact.timings.service_s(n)
        start = max(now, heapq.heappop(self._free))
        heapq.heappush(self._free, start + service)
        job = Job(id=self._next_id, arrival=now, output_tokens=n, service_s=service,
                  timings=self.artifact.timings, start=start, end=start + service)
        self._next_id += 1
        if start <= now:
            job.state = JobState.RUNNING
            self._running.append(job)
        else:
            self._queue.append(job)
        return job

    def advance(self, now: float) -> None:
        while self._queue and self._queue[0].start <= now:
            job = self._queue.popleft()
            job.state = JobState.RUNNING
            self._running.append(job)
        if self._running and min(j.end for j in self._running) <= now:
            still = []
            for job in self._running:
                if job.end <= now:
                    job.state = JobState.DONE
                    self.busy_s += job.end - job.start
                    self.completed += 1
                else:
                    still.append(job)
            self._running = still

    def cancel(self, job: Job, now: float) -> None:
        if job.state is JobState.WAITING:
            self._queue.remove(job)
        elif job.state is JobState.RUNNING and job.end > now:
            self._running.remove(job)
            self.busy_s += now - job.start
        else:
            self.advance(now)
            return
        job.state = JobState.CANCELLED
        job.end = min(job.end, now)
        self.cancelled += 1
        free = [j.end for j in self._running]
        free += [-math.inf] * (self.artifact.slots - len(free))
        heapq.heapify(free)
        for q in self._queue:
            q.start = max(q.arrival, now, heapq.heappop(free))
            q.end = q.start + q.service_s
            heapq.heappush(free, q.end)
        self._free = free
        self.advance(now)

    def slot_free_in_s(self, now: float) -> tuple[float, ...]:
        self.advance(now)
        return tuple(sorted(max(0.0, f - now) for f in self._free))


def _view(jobs: list[Job]) -> list[tuple[JobState, float, float]]:
    return [(j.state, j.start, j.end) for j in jobs]


@settings(max_examples=80, deadline=None)
@given(
    slots=st.integers(1, 5),
    steps=st.lists(st.tuples(st.sampled_from(["submit", "cancel", "advance", "snapshot"]),
                             st.floats(0.0, 0.3), st.integers(1, 40), st.integers(0, 60)),
                   min_size=1, max_size=60),
)
def test_retires_like_a_pass_over_the_slots(
    slots: int, steps: list[tuple[str, float, int, int]]
) -> None:
    art = replace(ART, slots=slots)
    new, old = Engine(art), PassEngine(art)
    new_jobs: list[Job] = []
    old_jobs: list[Job] = []
    t = 0.0
    for op, gap, n, pick in steps:
        t += gap
        if op == "submit":
            new_jobs.append(new.submit(t, n))
            old_jobs.append(old.submit(t, n))
        elif op == "cancel" and new_jobs:
            i = pick % len(new_jobs)
            new.cancel(new_jobs[i], t)
            old.cancel(old_jobs[i], t)
        elif op == "snapshot":
            assert new.snapshot(t).slot_free_in_s == old.slot_free_in_s(t)
        else:
            new.advance(t)
            old.advance(t)
        assert _view(new_jobs) == _view(old_jobs)
        assert (new.busy_s, new.completed, new.cancelled) == (
            old.busy_s, old.completed, old.cancelled)
    end = t + 10.0
    new.advance(end)
    old.advance(end)
    assert _view(new_jobs) == _view(old_jobs)
    assert (new.busy_s, new.completed, new.running) == (old.busy_s, old.completed, 0)


def test_jobs_ending_together_retire_in_slot_order() -> None:
    # A (placed first, ends later) and B end by the same wake-up: busy_s adds A then B, as the
    # pass did, and the float shows the order: (x + A) + B is 0.44999999999999996 here,
    # (x + B) + A would be 0.45.
    new, old = Engine(replace(ART, slots=3)), PassEngine(replace(ART, slots=3))
    for engine in (new, old):
        engine.submit(0.0, 1)  # x: 0.05 s, ends before A starts
        engine.submit(0.051, 20)  # A: ends at 0.291
        engine.submit(0.052, 12)  # B: ends at 0.212
        engine.advance(0.3)
    assert new.busy_s == old.busy_s == 0.44999999999999996
    assert new.completed == 3
