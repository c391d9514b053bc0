"""The exact schedule: a FIFO queue in front of an artifact's slots, on a virtual timeline.

The engine is pure and synchronous: every method takes ``now`` (seconds on the
caller's monotonic clock) and nothing here sleeps, so it is tested on a virtual
clock. The async layer (:mod:`lpu_emulator.backend`) calls :meth:`Engine.advance`
when the head of the queue is due and sleeps until the token times this module
computes.

Model. The artifact has ``c`` slots. A request that will produce ``n`` tokens
holds one slot for exactly ``artifact.timings.service_s(n)`` seconds. Requests are
served first come, first served: a request arriving at ``a`` starts at
``max(a, earliest virtual free time of a slot)`` once everything ahead of it is
placed. Its token ``k`` (0-based) is due at ``start + prefill + k * per_token``.

Invariants.

* ``_free`` is a heap of ``c`` virtual times: when each slot becomes free once
  all running *and* queued work is placed FIFO. A value ``<= now`` is a slot
  free now (``-inf`` for a slot never used). Its minimum is therefore the start
  a new arrival would get, so projections are O(1).
* Starts and ends come only from the virtual timeline, never from when a timer
  fired: a late wake-up never shifts anyone's schedule.
* A cancellation frees the slot at the moment of cancellation (or removes the
  request from the queue) and re-places every queued request, so later requests
  start earlier.
* ``_ends`` is a heap of ``(end, order, job)`` for every job that entered a slot
  (``order``: its place in ``_running``'s insertion order); an entry whose job
  left ``_running`` (cancelled) is skipped when it comes up. So finding the jobs
  that ended by ``now`` costs O(log slots) per job, not a pass over the slots per
  call, and they are retired in ``_running``'s order, as a pass would.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from lpu_protocol.artifact import Artifact, Timings

__all__ = ["Engine", "Job", "JobState", "LoadSnapshot"]

_NEVER = -math.inf


class JobState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(eq=False, slots=True)
class Job:
    """One request's place on the timeline. Times are seconds on the engine's clock.

    ``start`` is the projected start while waiting and the exact start once
    running; ``end`` is when the slot frees (``start + service_time(n)``, or the
    cancellation time).
    """

    id: int
    arrival: float
    output_tokens: int
    service_s: float
    timings: Timings
    start: float
    end: float
    state: JobState = JobState.WAITING

    def token_time(self, k: int) -> float:
        """When token ``k`` (0-based) is due."""
        return self.timings.token_at(k, self.start)

    def tokens_due(self, now: float) -> int:
        """How many tokens are due at ``now`` (0 before the first token, at most n)."""
        return self.timings.tokens_due(self.output_tokens, self.start, now)

    @property
    def queue_s(self) -> float:
        return self.start - self.arrival


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """What a router needs to predict the wait at one backend (see ``GET /load``)."""

    slots: int
    running: int
    waiting: int
    slot_free_in_s: tuple[float, ...]
    """Seconds from now until each slot is free once all work is placed, ascending."""


class Engine:
    """FIFO queue and slots of one artifact; pure bookkeeping on a virtual timeline."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._free: list[float] = [_NEVER] * artifact.slots
        self._queue: deque[Job] = deque()
        self._running: dict[int, Job] = {}
        """Jobs holding a slot by id, in the order they took it."""
        self._ends: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        self._next_id = 0
        self._admitted: list[Job] = []
        self.busy_s = 0.0
        """Slot-seconds consumed by requests that have ended (completed or cancelled)."""
        self.completed = 0
        self.cancelled = 0

    # --- projections (O(1)) -------------------------------------------------

    def projected_start(self, now: float) -> float:
        """Start a request arriving at ``now`` would get behind all current work."""
        return max(now, self._free[0])

    def projected_ttft(self, now: float) -> float:
        """Seconds from ``now`` to the first token of a request arriving now."""
        return self.projected_start(now) + self.artifact.prefill_s - now

    def would_wait(self, now: float) -> bool:
        """True when a request arriving now could not start at once."""
        return self._free[0] > now

    # --- state changes -----------------------------------------------------

    def submit(self, now: float, output_tokens: int) -> Job:
        """Place a request producing ``output_tokens`` (>= 1) that arrives at ``now``."""
        self.advance(now)
        timings = self.artifact.timings
        service = timings.service_s(output_tokens)
        start = max(now, heapq.heappop(self._free))
        heapq.heappush(self._free, start + service)
        job = Job(
            id=self._next_id,
            arrival=now,
            output_tokens=output_tokens,
            service_s=service,
            timings=timings,
            start=start,
            end=start + service,
        )
        self._next_id += 1
        if start <= now:
            self._run(job)
        else:
            self._queue.append(job)
        return job

    def advance(self, now: float) -> list[Job]:
        """Bring the state to ``now``; return the jobs admitted to a slot by this call.

        A queued job is admitted at its virtual start (already computed), so the
        caller may be late without changing anything. Every admission, whichever
        call made it (a submit, a snapshot...), is also kept for
        :meth:`take_admitted`, so an owner that wakes waiters misses none.
        """
        admitted: list[Job] = []
        while self._queue and self._queue[0].start <= now:
            job = self._queue.popleft()
            self._run(job)
            admitted.append(job)
        self._admitted += admitted
        ends = self._ends
        if ends and ends[0][0] <= now:
            running = self._running
            ended: list[tuple[int, Job]] = []
            while ends and ends[0][0] <= now:
                _, order, job = heapq.heappop(ends)
                if running.get(job.id) is job:
                    ended.append((order, job))
            ended.sort()  # _running's order: busy_s adds up in the same order as ever
            for _, job in ended:
                del running[job.id]
                job.state = JobState.DONE
                self.busy_s += job.end - job.start
                self.completed += 1
        return admitted

    def _run(self, job: Job) -> None:
        """``job`` takes its slot (its start and end are final)."""
        job.state = JobState.RUNNING
        self._running[job.id] = job
        heapq.heappush(self._ends, (job.end, next(self._order), job))

    def cancel(self, job: Job, now: float) -> list[Job]:
        """Withdraw ``job`` at ``now``: leave the queue, or free the slot now.

        Returns the jobs admitted as a consequence (a freed slot goes to the head
        of the queue at once). A job that already ended is left as it is.
        """
        if job.state is JobState.WAITING:
            self._queue.remove(job)
        elif job.state is JobState.RUNNING and job.end > now:
            del self._running[job.id]
            self.busy_s += now - job.start
        else:
            return self.advance(now)
        job.state = JobState.CANCELLED
        job.end = min(job.end, now)
        self.cancelled += 1
        self._replace(now)
        return self.advance(now)

    def _replace(self, now: float) -> None:
        """Recompute the slot free times and every queued start from the running jobs."""
        free = [j.end for j in self._running.values()]
        free += [_NEVER] * (self.artifact.slots - len(free))
        heapq.heapify(free)
        for job in self._queue:
            job.start = max(job.arrival, now, heapq.heappop(free))
            job.end = job.start + job.service_s
            heapq.heappush(free, job.end)
        self._free = free

    def take_admitted(self) -> list[Job]:
        """Jobs admitted from the queue since the last call (in admission order)."""
        out, self._admitted = self._admitted, []
        return out

    # --- reading -----------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def next_admission(self) -> float | None:
        """Virtual time at which the head of the queue starts, or None if none waits."""
        return self._queue[0].start if self._queue else None

    def idle_at(self) -> float:
        """Virtual time at which every slot is free and the queue empty (``-inf`` if now)."""
        return max(self._free)

    def queued(self) -> Iterator[Job]:
        return iter(self._queue)

    def snapshot(self, now: float) -> LoadSnapshot:
        """State at ``now`` (advances first)."""
        self.advance(now)
        return LoadSnapshot(
            slots=self.artifact.slots,
            running=len(self._running),
            waiting=len(self._queue),
            # Sorted first, then made relative: the same tuple as sorting max(0, f - now)
            # (a monotone map), with one pass fewer over the slots.
            slot_free_in_s=tuple([f - now if f > now else 0.0 for f in sorted(self._free)]),
        )
